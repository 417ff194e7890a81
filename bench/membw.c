/*
 * membw: read bandwidth of main memory, for bench/vs-llama-cpp.sh.
 *
 *   membw [MiB] [threads] [tries]      (defaults: 1024 MiB, all cores, 5 tries)
 *
 * Allocates MiB of memory, touches it from the threads that will read it (first
 * touch places the pages), then times `tries` parallel passes that each read every
 * byte once (a sum of 64-bit words, which the compiler vectorises; no writes) and
 * prints the best pass as one line: "<GB/s> <threads> <MiB> <tries>", GB = 1e9 bytes.
 * The best pass, not the mean: what a streaming reader like a decode step can get.
 *
 * Build: clang-19 -O3 -march=native -fopenmp bench/membw.c -o target/bench/membw
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int threads = argc > 2 ? atoi(argv[2]) : omp_get_num_procs();
    int tries = argc > 3 ? atoi(argv[3]) : 5;
    if (mib == 0 || threads < 1 || tries < 1) {
        fprintf(stderr, "usage: membw [MiB>0] [threads>0] [tries>0]\n");
        return 2;
    }
    omp_set_num_threads(threads);
    size_t n = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(4096, n * sizeof(uint64_t));
    if (!buf) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;

    double best = 1e30;
    uint64_t sink = 0;
    for (int t = 0; t < tries; t++) {
        uint64_t total = 0;
        double t0 = now();
#pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; i++) total += buf[i];
        double dt = now() - t0;
        sink ^= total;
        if (dt < best) best = dt;
    }
    double gbs = (double)n * sizeof(uint64_t) / best / 1e9;
    printf("%.2f %d %zu %d\n", gbs, threads, mib, tries);
    fprintf(stderr, "membw: checksum %llx\n", (unsigned long long)sink);
    free(buf);
    return 0;
}
