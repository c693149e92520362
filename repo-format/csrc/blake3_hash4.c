/*
 * blake3_hash4.c -- BLAKE3 chunk compression four chunks at a time, one chunk per vector lane,
 * for the architectures whose vector units the blake3 crate does not use (ppc64le VSX, s390x
 * z/Architecture vector facility). Written with GCC's generic vector extensions: the compiler
 * emits VSX with -mcpu=power8, z13 vector instructions with -march=z13, SSE2 on x86_64 (where it
 * is only compiled so the native tests exercise the same code).
 *
 * Contract of ferry_blake3_hash4 (src/hash/kernel.rs calls it): for i in 0..4, inputs[i] points
 * at 1024 bytes, a whole BLAKE3 chunk; out + 32*i receives that chunk's chaining value
 * (little-endian words) as if compressed with key words `key`, chunk counter `counter + i`, and
 * `flags` (CHUNK_START on the first block and CHUNK_END on the last are added here). The caller
 * never passes the root chunk. ferry_blake3_parent4 does the same for four parent nodes.
 * The caller checks the CPU (AT_HWCAP) before calling; nothing here runs at load time.
 */
#include <stdint.h>
#include <string.h>

typedef uint32_t v4u __attribute__((vector_size(16)));
typedef unsigned char v16b __attribute__((vector_size(16)));

#if defined(__clang__)
#define SHUF2(a, b, i0, i1, i2, i3) __builtin_shufflevector((a), (b), i0, i1, i2, i3)
#else
#define SHUF2(a, b, i0, i1, i2, i3) __builtin_shuffle((a), (b), (v4u){i0, i1, i2, i3})
#endif

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

/* Message word order of each of the 7 rounds (round r is the permutation applied r times). */
static const uint8_t SCHEDULE[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

enum { CHUNK_START = 1, CHUNK_END = 2 };

static inline v4u splat(uint32_t x) { return (v4u){x, x, x, x}; }
static inline v4u rotr(v4u x, int n) { return (x >> n) | (x << (32 - n)); }

/* Four 32-bit words from memory, as little-endian words whatever the host's byte order. */
static inline v4u load_le(const unsigned char *p) {
  v4u v;
  memcpy(&v, p, 16);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v16b b = (v16b)v;
#if defined(__clang__)
  b = __builtin_shufflevector(b, b, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
#else
  b = __builtin_shuffle(b, (v16b){3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12});
#endif
  v = (v4u)b;
#endif
  return v;
}

static inline void store_le32(unsigned char *p, uint32_t w) {
  p[0] = (unsigned char)w;
  p[1] = (unsigned char)(w >> 8);
  p[2] = (unsigned char)(w >> 16);
  p[3] = (unsigned char)(w >> 24);
}

#define G(a, b, c, d, x, y)     \
  do {                          \
    v[a] = v[a] + v[b] + (x);   \
    v[d] = rotr(v[d] ^ v[a], 16); \
    v[c] = v[c] + v[d];         \
    v[b] = rotr(v[b] ^ v[c], 12); \
    v[a] = v[a] + v[b] + (y);   \
    v[d] = rotr(v[d] ^ v[a], 8);  \
    v[c] = v[c] + v[d];         \
    v[b] = rotr(v[b] ^ v[c], 7);  \
  } while (0)

/* m[j] lane i = word j of block `block` of input i. */
static inline void transpose_block(const unsigned char *const in[4], size_t block, v4u m[16]) {
  for (int g = 0; g < 4; g++) {
    size_t off = block * 64 + (size_t)g * 16;
    v4u x0 = load_le(in[0] + off), x1 = load_le(in[1] + off);
    v4u x2 = load_le(in[2] + off), x3 = load_le(in[3] + off);
    v4u t0 = SHUF2(x0, x1, 0, 4, 1, 5), t1 = SHUF2(x0, x1, 2, 6, 3, 7);
    v4u t2 = SHUF2(x2, x3, 0, 4, 1, 5), t3 = SHUF2(x2, x3, 2, 6, 3, 7);
    m[4 * g + 0] = SHUF2(t0, t2, 0, 1, 4, 5);
    m[4 * g + 1] = SHUF2(t0, t2, 2, 3, 6, 7);
    m[4 * g + 2] = SHUF2(t1, t3, 0, 1, 4, 5);
    m[4 * g + 3] = SHUF2(t1, t3, 2, 3, 6, 7);
  }
}

/* One compression of four independent blocks, one per lane: h (the input chaining values) becomes
 * the output chaining values. */
static inline __attribute__((always_inline)) void compress4(v4u h[8], const v4u m[16], v4u ctr_lo, v4u ctr_hi, uint32_t block_len, uint32_t flags) {
  v4u v[16] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
               splat(IV[0]), splat(IV[1]), splat(IV[2]), splat(IV[3]),
               ctr_lo, ctr_hi, splat(block_len), splat(flags)};
#pragma GCC unroll 7
  for (int r = 0; r < 7; r++) {
    const uint8_t *s = SCHEDULE[r];
    G(0, 4, 8, 12, m[s[0]], m[s[1]]);
    G(1, 5, 9, 13, m[s[2]], m[s[3]]);
    G(2, 6, 10, 14, m[s[4]], m[s[5]]);
    G(3, 7, 11, 15, m[s[6]], m[s[7]]);
    G(0, 5, 10, 15, m[s[8]], m[s[9]]);
    G(1, 6, 11, 12, m[s[10]], m[s[11]]);
    G(2, 7, 8, 13, m[s[12]], m[s[13]]);
    G(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (int i = 0; i < 8; i++) h[i] = v[i] ^ v[i + 8];
}

static inline void store_cvs(const v4u h[8], unsigned char out[128]) {
  for (int lane = 0; lane < 4; lane++)
    for (int i = 0; i < 8; i++) store_le32(out + 32 * lane + 4 * i, h[i][lane]);
}

void ferry_blake3_hash4(const unsigned char *const inputs[4], const uint32_t key[8], uint64_t counter,
                        uint32_t flags, unsigned char out[128]) {
  v4u h[8];
  for (int i = 0; i < 8; i++) h[i] = splat(key[i]);
  uint64_t c0 = counter, c1 = counter + 1, c2 = counter + 2, c3 = counter + 3;
  const v4u ctr_lo = {(uint32_t)c0, (uint32_t)c1, (uint32_t)c2, (uint32_t)c3};
  const v4u ctr_hi = {(uint32_t)(c0 >> 32), (uint32_t)(c1 >> 32), (uint32_t)(c2 >> 32), (uint32_t)(c3 >> 32)};
  for (size_t block = 0; block < 16; block++) {
    uint32_t f = flags | (block == 0 ? CHUNK_START : 0) | (block == 15 ? CHUNK_END : 0);
    v4u m[16];
    transpose_block(inputs, block, m);
    compress4(h, m, ctr_lo, ctr_hi, 64, f);
  }
  store_cvs(h, out);
}

/* Four parent nodes: blocks[i] is 64 bytes, the left child's chaining value then the right's;
 * out + 32*i receives the parent's chaining value. `flags` includes PARENT (never ROOT). */
void ferry_blake3_parent4(const unsigned char *const blocks[4], const uint32_t key[8], uint32_t flags,
                          unsigned char out[128]) {
  v4u h[8];
  for (int i = 0; i < 8; i++) h[i] = splat(key[i]);
  v4u m[16];
  transpose_block(blocks, 0, m);
  compress4(h, m, splat(0), splat(0), 64, flags);
  store_cvs(h, out);
}
