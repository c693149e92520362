/*
 * gcm.c -- the pieces of AES-256-GCM that the aes-gcm crate does in software on IBM Power and Z:
 * GHASH on the carry-less multiply of the vector unit (POWER8 vpmsumd, z13 VGFMG), and on ppc64le
 * AES-256 itself on POWER8's vcipher/vcipherlast/vsbox. src/crypto/gcm.rs composes them into GCM
 * (counters, lengths block, tag) and the tests compare every path with the crate byte for byte.
 *
 * Representation (as in Gueron and Kounavis, "Intel Carry-Less Multiplication Instruction and
 * its Usage for Computing the GCM Mode"): a 16-byte GHASH block is the big-endian 128-bit
 * integer of its bytes, kept as two 64-bit halves (hi = bytes 0..8). In that form GCM's
 * bit-reflected field product is the carry-less product shifted left by one bit and reduced by
 * the reflected polynomial x^128 + x^127 + x^126 + x^121 + 1. Products of four blocks with H^4..H
 * are summed unreduced and reduced once.
 *
 * Elsewhere (x86_64, aarch64) the same GHASH code is compiled with a constant-time software
 * carry-less multiply, only so that the native tests exercise it; those CPUs use the crate.
 *
 * Contracts (the Rust side checks the CPU before calling):
 *   ferry_ghash_init(h, hp): h = the 16 bytes E_K(0); hp receives H^1..H^4 as (hi, lo) pairs.
 *   ferry_ghash(hp, y, in, n): y (hi, lo) <- GHASH state after absorbing n whole blocks at in.
 *   ferry_aes256_expand(key, rk)       [powerpc64 only]: rk[240] <- the AES-256 key schedule.
 *   ferry_aes256_ctr32(rk, iv, buf, len) [powerpc64 only]: buf ^= AES-CTR keystream starting at
 *     counter block iv, its last four bytes a big-endian counter incremented mod 2^32 (GCM inc32).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t load_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

/* ---- the carry-less multiply: V holds two 64-bit lanes; pmul(a, b) is the 128-bit
 * a.lane0 (x) b.lane0 ^ a.lane1 (x) b.lane1. pair(x, y) puts x in the lane where a loaded
 * block has its high half and y where it has its low half. */
#if defined(__powerpc64__) && defined(__CRYPTO__)
#include <altivec.h>
typedef __vector unsigned long long V;
typedef __vector unsigned char VB;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static const VB REVERSE = {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
/* The 16 bytes at p with p[0] in the register's most significant byte (vcipher's byte 0). */
static inline VB load_be(const uint8_t *p) {
  VB v = vec_xl(0, (const unsigned char *)p);
  return vec_perm(v, v, REVERSE);
}
static inline void store_be(VB v, uint8_t *p) { vec_xst(vec_perm(v, v, REVERSE), 0, (unsigned char *)p); }
static inline V pair(uint64_t hi, uint64_t lo) { return (V){lo, hi}; }
static inline void get(V v, uint64_t *hi, uint64_t *lo) { *hi = v[1], *lo = v[0]; }
#else
static inline VB load_be(const uint8_t *p) { return vec_xl(0, (const unsigned char *)p); }
static inline void store_be(VB v, uint8_t *p) { vec_xst(v, 0, (unsigned char *)p); }
static inline V pair(uint64_t hi, uint64_t lo) { return (V){hi, lo}; }
static inline void get(V v, uint64_t *hi, uint64_t *lo) { *hi = v[0], *lo = v[1]; }
#endif
static inline V load_block(const uint8_t *p) { return (V)load_be(p); }
static inline V pmul(V a, V b) { return __builtin_crypto_vpmsumd(a, b); }
static inline V vxor(V a, V b) { return a ^ b; }
#define FERRY_GCM_AES 1

#elif defined(__s390x__) && defined(__VEC__)
#include <vecintrin.h>
typedef __vector unsigned long long V;
static inline V load_block(const uint8_t *p) { return (V)vec_xl(0, (const unsigned char *)p); }
static inline V pair(uint64_t hi, uint64_t lo) { return (V){hi, lo}; }
static inline void get(V v, uint64_t *hi, uint64_t *lo) { *hi = v[0], *lo = v[1]; }
static inline V pmul(V a, V b) { return (V)vec_gfmsum_128(a, b); }
static inline V vxor(V a, V b) { return a ^ b; }

#else
typedef struct {
  uint64_t hi, lo;
} V;
static inline V load_block(const uint8_t *p) { return (V){load_be64(p), load_be64(p + 8)}; }
static inline V pair(uint64_t hi, uint64_t lo) { return (V){hi, lo}; }
static inline void get(V v, uint64_t *hi, uint64_t *lo) { *hi = v.hi, *lo = v.lo; }
static inline V vxor(V a, V b) { return (V){a.hi ^ b.hi, a.lo ^ b.lo}; }
/* Carry-less 64 x 64 -> 128 without data-dependent branches or indices. */
static inline V clmul64(uint64_t a, uint64_t b) {
  uint64_t hi = 0, lo = a & (0 - (b & 1));
  for (int i = 1; i < 64; i++) {
    uint64_t m = 0 - ((b >> i) & 1);
    lo ^= (a << i) & m;
    hi ^= (a >> (64 - i)) & m;
  }
  return (V){hi, lo};
}
static inline V pmul(V a, V b) { return vxor(clmul64(a.hi, b.hi), clmul64(a.lo, b.lo)); }
#endif

/* A multiplier b prepared so that pmul(block, k.x) gives block.hi*b.hi (hh), block.hi*b.lo ^
 * block.lo*b.hi (mid) and block.lo*b.lo (ll). */
typedef struct {
  V hh, mid, ll;
} Key;

static inline Key key_of(uint64_t hi, uint64_t lo) { return (Key){pair(hi, 0), pair(lo, hi), pair(0, lo)}; }

/* Shift the 256-bit product hh<<128 ^ mid<<64 ^ ll left by one and reduce it. */
static inline void reduce(V hh, V mid, V ll, uint64_t *yhi, uint64_t *ylo) {
  uint64_t h1, h0, m1, m0, l1, l0;
  get(hh, &h1, &h0);
  get(mid, &m1, &m0);
  get(ll, &l1, &l0);
  uint64_t x3 = h1, x2 = h0 ^ m1, x1 = l1 ^ m0, x0 = l0;
  x3 = (x3 << 1) | (x2 >> 63);
  x2 = (x2 << 1) | (x1 >> 63);
  x1 = (x1 << 1) | (x0 >> 63);
  x0 <<= 1;
  uint64_t d = x1 ^ (x0 << 63) ^ (x0 << 62) ^ (x0 << 57);
  uint64_t e1 = d >> 1, e0 = (x0 >> 1) | (d << 63);
  uint64_t f1 = d >> 2, f0 = (x0 >> 2) | (d << 62);
  uint64_t g1 = d >> 7, g0 = (x0 >> 7) | (d << 57);
  *yhi = x3 ^ d ^ e1 ^ f1 ^ g1;
  *ylo = x2 ^ x0 ^ e0 ^ f0 ^ g0;
}

static void gmul(uint64_t ahi, uint64_t alo, uint64_t bhi, uint64_t blo, uint64_t *rhi, uint64_t *rlo) {
  V a = pair(ahi, alo);
  Key k = key_of(bhi, blo);
  reduce(pmul(a, k.hh), pmul(a, k.mid), pmul(a, k.ll), rhi, rlo);
}

void ferry_ghash_init(const uint8_t h[16], uint64_t hp[8]) {
  hp[0] = load_be64(h), hp[1] = load_be64(h + 8);
  for (int i = 1; i < 4; i++) gmul(hp[2 * i - 2], hp[2 * i - 1], hp[0], hp[1], &hp[2 * i], &hp[2 * i + 1]);
}

void ferry_ghash(const uint64_t hp[8], uint64_t y[2], const uint8_t *in, size_t nblocks) {
  Key k1 = key_of(hp[0], hp[1]), k2 = key_of(hp[2], hp[3]);
  Key k3 = key_of(hp[4], hp[5]), k4 = key_of(hp[6], hp[7]);
  uint64_t yhi = y[0], ylo = y[1];
  for (; nblocks >= 4; nblocks -= 4, in += 64) {
    V b0 = vxor(load_block(in), pair(yhi, ylo)), b1 = load_block(in + 16);
    V b2 = load_block(in + 32), b3 = load_block(in + 48);
    V hh = vxor(vxor(pmul(b0, k4.hh), pmul(b1, k3.hh)), vxor(pmul(b2, k2.hh), pmul(b3, k1.hh)));
    V mid = vxor(vxor(pmul(b0, k4.mid), pmul(b1, k3.mid)), vxor(pmul(b2, k2.mid), pmul(b3, k1.mid)));
    V ll = vxor(vxor(pmul(b0, k4.ll), pmul(b1, k3.ll)), vxor(pmul(b2, k2.ll), pmul(b3, k1.ll)));
    reduce(hh, mid, ll, &yhi, &ylo);
  }
  for (; nblocks > 0; nblocks--, in += 16) {
    V b = vxor(load_block(in), pair(yhi, ylo));
    reduce(pmul(b, k1.hh), pmul(b, k1.mid), pmul(b, k1.ll), &yhi, &ylo);
  }
  y[0] = yhi, y[1] = ylo;
}

#ifdef FERRY_GCM_AES
/* ---- AES-256 on POWER8: vcipher does one full round (ShiftRows, SubBytes, MixColumns,
 * AddRoundKey) on the state held with byte 0 most significant; vcipherlast the last round;
 * vsbox SubBytes alone (the key schedule). */
typedef __vector unsigned int VW;

static inline uint32_t sub_word(uint32_t w) {
  VW v = vec_splats(w);
  v = (VW)__builtin_crypto_vsbox((V)v);
  return v[0];
}

void ferry_aes256_expand(const uint8_t key[32], uint8_t rk[240]) {
  memcpy(rk, key, 32);
  uint8_t rcon = 1;
  for (int i = 8; i < 60; i++) {
    uint8_t t[4];
    memcpy(t, rk + 4 * (i - 1), 4);
    if (i % 8 == 0) {
      uint8_t r[4] = {t[1], t[2], t[3], t[0]};
      memcpy(t, r, 4);
    }
    if (i % 4 == 0) {
      uint32_t w;
      memcpy(&w, t, 4);
      w = sub_word(w); /* byte-wise, so the word's byte order does not matter */
      memcpy(t, &w, 4);
    }
    if (i % 8 == 0) {
      t[0] ^= rcon;
      rcon = (uint8_t)(rcon << 1);
    }
    for (int j = 0; j < 4; j++) rk[4 * i + j] = rk[4 * (i - 8) + j] ^ t[j];
  }
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static const VW ONE = {1, 0, 0, 0};
#else
static const VW ONE = {0, 0, 0, 1};
#endif

#define ROUNDS(s)                                                                                  \
  do {                                                                                             \
    for (int r = 1; r < 14; r++) s = (VB)__builtin_crypto_vcipher((V)s, (V)k[r]);                  \
    s = (VB)__builtin_crypto_vcipherlast((V)s, (V)k[14]);                                          \
  } while (0)

void ferry_aes256_ctr32(const uint8_t rk[240], const uint8_t iv[16], uint8_t *buf, size_t len) {
  VB k[15];
  for (int i = 0; i < 15; i++) k[i] = load_be(rk + 16 * i);
  VW ctr = (VW)load_be(iv);
  for (; len >= 128; len -= 128, buf += 128) {
    VB s[8];
    for (int j = 0; j < 8; j++) {
      s[j] = (VB)ctr ^ k[0];
      ctr += ONE;
    }
    for (int r = 1; r < 14; r++)
      for (int j = 0; j < 8; j++) s[j] = (VB)__builtin_crypto_vcipher((V)s[j], (V)k[r]);
    for (int j = 0; j < 8; j++) {
      s[j] = (VB)__builtin_crypto_vcipherlast((V)s[j], (V)k[14]);
      store_be(s[j] ^ load_be(buf + 16 * j), buf + 16 * j);
    }
  }
  for (; len > 0;) {
    VB s = (VB)ctr ^ k[0];
    ctr += ONE;
    ROUNDS(s);
    uint8_t ks[16];
    store_be(s, ks);
    size_t n = len < 16 ? len : 16;
    for (size_t i = 0; i < n; i++) buf[i] ^= ks[i];
    buf += n, len -= n;
  }
}
#endif
