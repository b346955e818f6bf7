// llama.cpp's model load time, timed as benches/load.rs times fitbench's: median of 5, warm
// and cold (the file evicted from the page cache first). Build against a llama.cpp build:
//
//   cc -O2 benches/peers/llama_load.c -I$LLAMA/include -I$LLAMA/ggml/include
//      -L$LLAMA/build/bin -lllama -lggml -lggml-base -Wl,-rpath,$LLAMA/build/bin -o llama_load
//   (one command line)
//   ./llama_load model.gguf
#define _POSIX_C_SOURCE 200112L
#include "llama.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define RUNS 5

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)level; (void)text; (void)data;
}

static void evict(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) { posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); close(fd); }
}

static double load_ms(const char *path) {
    struct llama_model_params params = llama_model_default_params();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    struct llama_model *model = llama_model_load_from_file(path, params);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (!model) { fprintf(stderr, "%s: cannot load\n", path); exit(1); }
    llama_model_free(model);
    return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
}

static int compare(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static double median_ms(const char *path, int cold) {
    double times[RUNS];
    for (int i = 0; i < RUNS; i++) {
        if (cold) evict(path);
        times[i] = load_ms(path);
    }
    qsort(times, RUNS, sizeof times[0], compare);
    return times[RUNS / 2];
}

int main(int argc, char **argv) {
    llama_log_set(quiet, NULL);
    llama_backend_init();
    for (int i = 1; i < argc; i++) {
        load_ms(argv[i]);
        double warm = median_ms(argv[i], 0);
        double cold = median_ms(argv[i], 1);
        printf("| %s | %.0f ms | %.0f ms |\n", argv[i], warm, cold);
    }
    return 0;
}
