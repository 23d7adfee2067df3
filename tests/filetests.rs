//! Runs every `.tir` filetest under `tests/filetests/` (see `tessera_tests::filetest`).
//! `TESSERA_BLESS=1 cargo test --test filetests` rewrites the expectations in place.
//! A command-line argument filters files by substring.

use std::path::{Path, PathBuf};
use tessera_tests::filetest::{run_file, Outcome};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "tir") {
            out.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("filetests");
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let bless = std::env::var("TESSERA_BLESS").is_ok_and(|v| v == "1");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    files.retain(|f| filter.is_empty() || filter.iter().any(|s| f.to_string_lossy().contains(s.as_str())));
    let (mut passed, mut failed, mut blessed) = (0, 0, 0);
    for f in &files {
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        match run_file(f, bless) {
            Outcome::Pass => passed += 1,
            Outcome::Blessed => {
                blessed += 1;
                println!("blessed {name}");
            }
            Outcome::Fail(why) => {
                failed += 1;
                println!("FAIL {name}\n{why}");
            }
        }
    }
    if files.is_empty() {
        println!("no filetests found under {}", root.display());
        std::process::exit(1);
    }
    println!(
        "filetests: {passed} passed, {failed} failed{}",
        if blessed > 0 { format!(" ({blessed} blessed)") } else { String::new() }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
