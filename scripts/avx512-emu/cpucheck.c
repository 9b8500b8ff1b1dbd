/* Guest-side check for scripts/avx512-emu.sh: reports the CPUID bits and XCR0 state the
 * crypto-simd AVX-512 paths need, then executes one 512-bit VAESENC and one VPCLMULQDQ and
 * compares every lane with the 128-bit AES-NI / PCLMULQDQ result. Prints
 * "AVX512-CHECK: AVX512F PASS" if AVX-512F and its register state are on, and
 * "AVX512-CHECK: VAES PASS" if VAES and VPCLMULQDQ are there too and agree with AES-NI. */
#include <cpuid.h>
#include <immintrin.h>
#include <stdio.h>
#include <string.h>

__attribute__((target("avx512f,vaes,vpclmulqdq,aes,pclmul")))
static int exec_check(void) {
    unsigned char in[64], key[16], wide[64], narrow[64], cw[64], cn[64];
    for (int i = 0; i < 64; i++) in[i] = (unsigned char)(i * 7 + 3);
    for (int i = 0; i < 16; i++) key[i] = (unsigned char)(0xa5 ^ (i * 13));
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    __m512i x = _mm512_loadu_si512(in);
    _mm512_storeu_si512(wide, _mm512_aesenc_epi128(x, _mm512_broadcast_i32x4(k)));
    _mm512_storeu_si512(cw, _mm512_clmulepi64_epi128(x, _mm512_broadcast_i32x4(k), 0x01));
    for (int l = 0; l < 4; l++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(in + 16 * l));
        _mm_storeu_si128((__m128i *)(narrow + 16 * l), _mm_aesenc_si128(v, k));
        _mm_storeu_si128((__m128i *)(cn + 16 * l), _mm_clmulepi64_si128(v, k, 0x01));
    }
    return memcmp(wide, narrow, 64) == 0 && memcmp(cw, cn, 64) == 0;
}

int main(void) {
    unsigned a, b, c, d;
    __cpuid_count(1, 0, a, b, c, d);
    int aes = (c >> 25) & 1, osxsave = (c >> 27) & 1, pclmul = (c >> 1) & 1;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1,
        avx512vl = (b >> 31) & 1, sha = (b >> 29) & 1, vaes = (c >> 9) & 1,
        vpclmulqdq = (c >> 10) & 1;
    unsigned long long xcr0 = 0;
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((unsigned long long)hi << 32) | lo;
    }
    int zmm_state = (xcr0 & 0xe6) == 0xe6; /* SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM */
    printf("AVX512-CHECK: cpuid aes=%d pclmulqdq=%d avx2=%d sha=%d avx512f=%d avx512bw=%d "
           "avx512vl=%d vaes=%d vpclmulqdq=%d xcr0=%#llx\n",
           aes, pclmul, avx2, sha, avx512f, avx512bw, avx512vl, vaes, vpclmulqdq, xcr0);
    if (!(avx2 && avx512f && zmm_state)) {
        printf("AVX512-CHECK: FAIL (no AVX-512F or no ZMM state in XCR0)\n");
        return 1;
    }
    printf("AVX512-CHECK: AVX512F PASS\n");
    if (!(aes && pclmul && vaes && vpclmulqdq)) {
        printf("AVX512-CHECK: no VAES/VPCLMULQDQ\n");
        return 0;
    }
    int ok = exec_check();
    printf("AVX512-CHECK: 512-bit VAESENC/VPCLMULQDQ vs 128-bit: %s\n", ok ? "equal" : "DIFFERENT");
    if (ok) printf("AVX512-CHECK: VAES PASS\n");
    return ok ? 0 : 1;
}
