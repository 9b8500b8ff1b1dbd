/* Throughput and latency of SHA-NI and AES-NI instructions, in TSC ticks per instruction:
 * the bounds behind the edge-path analysis in crypto-simd/README.md (issue 3, target b).
 * gcc -O2 -msha -maes bench/probes/sha_ni_aes_ports.c -o /tmp/probe && taskset -c 1 /tmp/probe
 * The last line (aesenc, 2 per cycle on Zen 3) gives the core clock over the TSC clock. */
#include <stdint.h>
#include <stdio.h>
#include <x86intrin.h>

#define N 10000000

/* Eight instructions on xmm0..xmm7 (each its own chain), with xmm8 as the other operand. */
#define EIGHT(a, b, c, d, e, f, g, h)                                                      \
  a " %%xmm8,%%xmm0\n" b " %%xmm8,%%xmm1\n" c " %%xmm8,%%xmm2\n" d " %%xmm8,%%xmm3\n"   \
  e " %%xmm8,%%xmm4\n" f " %%xmm8,%%xmm5\n" g " %%xmm8,%%xmm6\n" h " %%xmm8,%%xmm7\n"

/* Runs 32 instructions of `body` (".rept" included) N times; prints ticks per instruction. */
#define TIME(label, body)                                                                  \
  do {                                                                                   \
    uint64_t t0 = __rdtsc();                                                             \
    for (long i = 0; i < N; i++)                                                         \
      __asm__ volatile(body ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",  \
                       "xmm7");                                                          \
    printf("%s: %.2f tsc/insn\n", label, (double)(__rdtsc() - t0) / N / 32);             \
  } while (0)

#define R4 "sha1rnds4 $0,"

int main(void) {
  TIME("rnds4 tput", ".rept 4\n" EIGHT(R4, R4, R4, R4, R4, R4, R4, R4) ".endr\n");
  TIME("rnds4 lat", ".rept 32\n sha1rnds4 $0,%%xmm8,%%xmm0\n.endr\n");
  TIME("msg/nexte tput", ".rept 4\n" EIGHT("sha1msg1", "sha1msg1", "sha1msg2", "sha1msg2",
                                           "sha1nexte", "sha1nexte", "sha1msg1", "sha1msg2")
                             ".endr\n");
  TIME("mixed (4 rnds4 + msg1+msg2+nexte+pxor) per 8",
       ".rept 4\n" EIGHT(R4, "sha1msg1", R4, "sha1msg2", R4, "sha1nexte", R4, "pxor") ".endr\n");
  TIME("aesenc tput", ".rept 4\n" EIGHT("aesenc", "aesenc", "aesenc", "aesenc", "aesenc", "aesenc",
                                        "aesenc", "aesenc") ".endr\n");
  return 0;
}
