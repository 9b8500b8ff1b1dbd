/* Throughput and latency of SHA-NI and AES-NI instructions, in TSC ticks per instruction:
 * the bounds behind the edge-path analysis in crypto-simd/README.md (issue 3, target b).
 * gcc -O2 -msha -maes bench/probes/sha_ni_aes_ports.c -o /tmp/probe && taskset -c 1 /tmp/probe
 * The last line (aesenc, 2 per cycle on Zen 3) gives the core clock over the TSC clock. */
#include <stdio.h>
#include <stdint.h>
#include <x86intrin.h>
#define N 10000000
static inline uint64_t rd(){return __rdtsc();}
int main(){
  uint64_t t0,t1;
  // rnds4 throughput: 8 independent chains
  t0=rd();
  for(long i=0;i<N;i++){
    __asm__ volatile(
      ".rept 4\n"
      "sha1rnds4 $0,%%xmm8,%%xmm0\n sha1rnds4 $0,%%xmm8,%%xmm1\n sha1rnds4 $0,%%xmm8,%%xmm2\n sha1rnds4 $0,%%xmm8,%%xmm3\n"
      "sha1rnds4 $0,%%xmm8,%%xmm4\n sha1rnds4 $0,%%xmm8,%%xmm5\n sha1rnds4 $0,%%xmm8,%%xmm6\n sha1rnds4 $0,%%xmm8,%%xmm7\n"
      ".endr\n":::"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7");
  }
  t1=rd(); printf("rnds4 tput: %.2f tsc/insn\n",(double)(t1-t0)/N/32);
  t0=rd();
  for(long i=0;i<N;i++){
    __asm__ volatile(".rept 32\n sha1rnds4 $0,%%xmm8,%%xmm0\n.endr\n":::"xmm0");
  }
  t1=rd(); printf("rnds4 lat: %.2f tsc/insn\n",(double)(t1-t0)/N/32);
  t0=rd();
  for(long i=0;i<N;i++){
    __asm__ volatile(
      ".rept 4\n"
      "sha1msg1 %%xmm8,%%xmm0\n sha1msg1 %%xmm8,%%xmm1\n sha1msg2 %%xmm8,%%xmm2\n sha1msg2 %%xmm8,%%xmm3\n"
      "sha1nexte %%xmm8,%%xmm4\n sha1nexte %%xmm8,%%xmm5\n sha1msg1 %%xmm8,%%xmm6\n sha1msg2 %%xmm8,%%xmm7\n"
      ".endr\n":::"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7");
  }
  t1=rd(); printf("msg/nexte tput: %.2f tsc/insn\n",(double)(t1-t0)/N/32);
  t0=rd();
  for(long i=0;i<N;i++){
    __asm__ volatile(
      ".rept 4\n"
      "sha1rnds4 $0,%%xmm8,%%xmm0\n sha1msg1 %%xmm8,%%xmm1\n sha1rnds4 $0,%%xmm8,%%xmm2\n sha1msg2 %%xmm8,%%xmm3\n"
      "sha1rnds4 $0,%%xmm8,%%xmm4\n sha1nexte %%xmm8,%%xmm5\n sha1rnds4 $0,%%xmm8,%%xmm6\n pxor %%xmm8,%%xmm7\n"
      ".endr\n":::"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7");
  }
  t1=rd(); printf("mixed (4 rnds4 + msg1+msg2+nexte+pxor) per 8: %.2f tsc/insn\n",(double)(t1-t0)/N/32);
  // aes
  t0=rd();
  for(long i=0;i<N;i++){
    __asm__ volatile(".rept 4\n aesenc %%xmm8,%%xmm0\n aesenc %%xmm8,%%xmm1\n aesenc %%xmm8,%%xmm2\n aesenc %%xmm8,%%xmm3\n aesenc %%xmm8,%%xmm4\n aesenc %%xmm8,%%xmm5\n aesenc %%xmm8,%%xmm6\n aesenc %%xmm8,%%xmm7\n.endr\n":::"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7");
  }
  t1=rd(); printf("aesenc tput: %.2f tsc/insn\n",(double)(t1-t0)/N/32);
  return 0;}
