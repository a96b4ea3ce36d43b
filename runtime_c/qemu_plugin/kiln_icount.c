/* kiln's instruction-count plugin for QEMU user mode (kiln.device.icount runs it).
 *
 * Arguments: ranges=FILE (lines "START END BUCKET": half-open guest address ranges, sorted by START, not
 * overlapping) and out=FILE; buckets are numbered from 0. Every translated block gets an inline add of
 * its instruction count to the total and, when the block starts inside a range, to that range's bucket (so
 * counting costs one or two adds per executed block). At exit, out=FILE receives "total N" and one line
 * "BUCKET N" per bucket. */
#include "qemu_plugin_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KILN_ICOUNT_PATH_MAX 4096

QEMU_PLUGIN_EXPORT int qemu_plugin_version = KILN_QEMU_PLUGIN_VERSION;

typedef struct {
    uint64_t start, end;
    uint32_t bucket;
} range_t;

static range_t *g_ranges;
static size_t g_nranges;
static uint64_t *g_counts; /* g_nbuckets buckets, then the total */
static size_t g_nbuckets;
static char g_out[KILN_ICOUNT_PATH_MAX];

static const range_t *find_range(uint64_t pc) {
    size_t lo = 0, hi = g_nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pc < g_ranges[mid].start) {
            hi = mid;
        } else if (pc >= g_ranges[mid].end) {
            lo = mid + 1;
        } else {
            return &g_ranges[mid];
        }
    }
    return NULL;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    uint64_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_counts[g_nbuckets], n);
    const range_t *r = find_range(qemu_plugin_tb_vaddr(tb));
    if (r != NULL) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_counts[r->bucket], n);
    }
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    FILE *f = fopen(g_out, "w");
    if (f == NULL) {
        qemu_plugin_outs("kiln icount: cannot write the counts file\n");
        return;
    }
    fprintf(f, "total %" PRIu64 "\n", g_counts[g_nbuckets]);
    for (size_t b = 0; b < g_nbuckets; b++) {
        fprintf(f, "%zu %" PRIu64 "\n", b, g_counts[b]);
    }
    fclose(f);
}

static int fail(const char *why) {
    char msg[256];
    snprintf(msg, sizeof msg, "kiln icount: %s\n", why);
    qemu_plugin_outs(msg);
    return -1;
}

static int read_ranges(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return fail("cannot open the ranges file");
    }
    size_t cap = 256;
    g_ranges = malloc(cap * sizeof *g_ranges);
    uint64_t start, end;
    uint32_t bucket;
    int got;
    while (g_ranges != NULL && (got = fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNu32, &start, &end, &bucket)) == 3) {
        if (end <= start ||
            (g_nranges > 0 && start < g_ranges[g_nranges - 1].end)) {
            fclose(f);
            return fail("bad ranges file: a range is empty, unsorted or overlapping");
        }
        if (g_nranges == cap) {
            cap *= 2;
            range_t *grown = realloc(g_ranges, cap * sizeof *g_ranges);
            if (grown == NULL) {
                break;
            }
            g_ranges = grown;
        }
        g_ranges[g_nranges++] = (range_t){start, end, bucket};
        if ((size_t)bucket + 1 > g_nbuckets) {
            g_nbuckets = (size_t)bucket + 1;
        }
    }
    int at_end = feof(f);
    fclose(f);
    if (g_ranges == NULL || !at_end) {
        return fail("bad ranges file: expected lines 'START END BUCKET'");
    }
    g_counts = calloc(g_nbuckets + 1, sizeof *g_counts);
    return g_counts == NULL ? fail("out of memory") : 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    const char *ranges = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "ranges=", 7) == 0) {
            ranges = argv[i] + 7;
        } else if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof g_out) {
            strcpy(g_out, argv[i] + 4);
        } else {
            return fail("unknown argument (expected ranges=FILE,out=FILE)");
        }
    }
    if (ranges == NULL || g_out[0] == '\0') {
        return fail("needs ranges=FILE and out=FILE");
    }
    if (read_ranges(ranges) != 0) {
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
