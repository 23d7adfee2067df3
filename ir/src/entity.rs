//! Entity references: `u32` newtypes that print with a prefix (`v3`, `n7`, `c2`).

use std::fmt;

macro_rules! entity {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }

            pub fn from_index(index: usize) -> Self {
                $name(u32::try_from(index).expect(concat!(stringify!($name), " index overflows u32")))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

entity!(
    /// A tensor value, defined exactly once (graph input, constant or node result).
    Value,
    "v"
);
entity!(
    /// An operation node.
    Node,
    "n"
);
entity!(
    /// A constant's storage, owned by the graph and shareable between graphs.
    ConstId,
    "c"
);
