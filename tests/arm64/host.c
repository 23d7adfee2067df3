/* The host functions Tessera's kernels call by name (targets/cpu/src/host.rs), for the arm64
 * driver: the same semantics in C. The libcalls (ceilf, fmaf, ...) come from libm itself. */
#include <math.h>
#include <stdint.h>
#include <string.h>

float tessera_host_log(float x) { return logf(x); }
float tessera_host_sin(float x) { return sinf(x); }
float tessera_host_cos(float x) { return cosf(x); }
float tessera_host_pow(float x, float y) { return powf(x, y); }
float tessera_host_fmod(float x, float y) { return fmodf(x, y); }
float tessera_host_mod(float x, float y) {
  float r = fmodf(x, y);
  return (r != 0.0f && (r < 0.0f) != (y < 0.0f)) ? r + y : r;
}

static uint32_t bits_of(float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  return b;
}
static float float_of(uint32_t b) {
  float x;
  memcpy(&x, &b, 4);
  return x;
}
/* Round to nearest even, NaN kept quiet (as the `half` crate). */
static uint16_t to_bf16(float x) {
  uint32_t b = bits_of(x);
  if (isnan(x)) return (uint16_t)((b >> 16) | 0x0040);
  return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

float tessera_host_round_f16(float x) { return (float)(_Float16)x; }
float tessera_host_round_bf16(float x) { return float_of((uint32_t)to_bf16(x) << 16); }
float tessera_host_f16_to_f32(int32_t bits) {
  uint16_t u = (uint16_t)bits;
  _Float16 h;
  memcpy(&h, &u, 2);
  return (float)h;
}
int32_t tessera_host_f32_to_f16(float x) {
  _Float16 h = (_Float16)x;
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}
int32_t tessera_host_f32_to_bf16(float x) { return to_bf16(x); }

/* Wrapping integer power; the exponent capped at UINT32_MAX (negative ones are refused by the
 * kernel before the call). */
int64_t tessera_host_ipow(int64_t x, int64_t y) {
  uint64_t e = y > (int64_t)UINT32_MAX ? UINT32_MAX : (uint64_t)y, base = (uint64_t)x, acc = 1;
  while (e) {
    if (e & 1) acc *= base;
    base *= base;
    e >>= 1;
  }
  return (int64_t)acc;
}
static int64_t wrapping_rem(int64_t x, int64_t y) { return y == -1 ? 0 : x % y; }
static int64_t rem_euclid(int64_t x, int64_t y) {
  int64_t r = wrapping_rem(x, y);
  return r < 0 ? (y < 0 ? (int64_t)((uint64_t)r - (uint64_t)y) : (int64_t)((uint64_t)r + (uint64_t)y)) : r;
}
int64_t tessera_host_imod(int64_t x, int64_t y) {
  int64_t r = rem_euclid(x, y);
  return (int64_t)((uint64_t)r + (uint64_t)((y < 0 && r != 0) ? y : 0));
}
int64_t tessera_host_irem(int64_t x, int64_t y) { return wrapping_rem(x, y); }

float tessera_host_dq_scale(float lo, float hi) {
  float scale = (hi - lo) / 255.0f;
  return (scale == 0.0f || !isfinite(scale)) ? 1.0f : scale;
}
int32_t tessera_host_dq_zero(float lo, float scale) {
  float z = rintf(-lo / scale); /* ties to even in the default rounding mode */
  if (isnan(z)) return 0;
  return z < 0.0f ? 0 : z > 255.0f ? 255 : (int32_t)z;
}

void tessera_host_fake_quant_q8_0(float amax, float *out) {
  out[0] = amax != 0.0f ? 127.0f / amax : 0.0f;
  out[1] = (float)(_Float16)(amax / 127.0f);
}
void tessera_host_fake_quant_q8_k(float amax, float *out) {
  if (amax == 0.0f) {
    out[0] = out[1] = 0.0f;
    return;
  }
  float iscale = 127.0f / amax;
  out[0] = iscale;
  out[1] = 1.0f / iscale;
}
