/* Runs a model through Tessera's C API.
 *
 *   run_model MODEL OUT_DIR [INPUT.bin DIMS]...
 *
 * MODEL is an artifact (`tessera compile model.onnx -o model.tsa`) or a model file (.onnx,
 * compiled at startup). Each input is a file of raw bytes in the input's dtype (packed,
 * row-major, little-endian) and its dims as `1,8`; the inputs follow the model's input order.
 * Prints the model's signature and each output's dtype and shape, and writes output j's bytes
 * to OUT_DIR/output_j.bin.
 *
 * Build (from the repository root, after `cargo build -p tessera-capi`):
 *   cc -Icapi/include capi/examples/run_model.c -Ltarget/debug -ltessera \
 *      -Wl,-rpath,$PWD/target/debug -o run_model
 */
#include "tessera.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
  const char *msg = tessera_last_error();
  fprintf(stderr, "run_model: %s: %s\n", what, msg ? msg : "(no message)");
  return 1;
}

static void print_port(const char *kind, size_t i, const TesseraPort *p) {
  printf("%s %zu: %s %s[", kind, i, p->name, tessera_dtype_name(p->dtype));
  for (size_t d = 0; d < p->rank; d++) {
    if (d) printf(", ");
    if (p->dim_names[d]) printf("%s", p->dim_names[d]);
    else printf("%lld", (long long)p->dims[d]);
  }
  printf("]\n");
}

static void *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* Parses "1,8" into dims; returns the rank, or -1. */
static int parse_dims(const char *s, int64_t *dims, int max) {
  int rank = 0;
  if (*s == '\0') return 0; /* a scalar */
  while (*s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || rank == max) return -1;
    dims[rank++] = v;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return -1;
  }
  return rank;
}

int main(int argc, char **argv) {
  if (argc < 3 || (argc - 3) % 2 != 0) {
    fprintf(stderr, "usage: %s MODEL OUT_DIR [INPUT.bin DIMS]...\n", argv[0]);
    return 2;
  }
  printf("tessera %s\n", tessera_version());
  TesseraSession *session = NULL;
  TesseraOptions options = {.threads = 0, .cache_dir = NULL};
  if (tessera_session_open(argv[1], &options, &session) != TESSERA_STATUS_OK) return fail("open");

  size_t n_in = tessera_session_input_count(session), n_out = tessera_session_output_count(session);
  TesseraPort port;
  for (size_t i = 0; i < n_in; i++) {
    if (tessera_session_input(session, i, &port) != TESSERA_STATUS_OK) return fail("input");
    print_port("input", i, &port);
  }
  for (size_t i = 0; i < n_out; i++) {
    if (tessera_session_output(session, i, &port) != TESSERA_STATUS_OK) return fail("output");
    print_port("output", i, &port);
  }

  size_t given = (size_t)(argc - 3) / 2;
  TesseraTensor *inputs = calloc(given ? given : 1, sizeof(TesseraTensor));
  int64_t(*dims)[8] = calloc(given ? given : 1, sizeof(*dims));
  for (size_t i = 0; i < given; i++) {
    const char *file = argv[3 + 2 * i], *shape = argv[4 + 2 * i];
    int rank = parse_dims(shape, dims[i], 8);
    if (rank < 0) {
      fprintf(stderr, "run_model: input %zu: bad dims %s (want e.g. 1,8)\n", i, shape);
      return 2;
    }
    size_t len = 0;
    void *data = read_file(file, &len);
    if (!data) {
      fprintf(stderr, "run_model: cannot read %s\n", file);
      return 2;
    }
    /* The dtype the model wants; a wrong one would be refused with a message. */
    TesseraPort p;
    TesseraDtype dtype = TESSERA_DTYPE_F32;
    if (i < n_in && tessera_session_input(session, i, &p) == TESSERA_STATUS_OK) dtype = p.dtype;
    inputs[i] = (TesseraTensor){.dtype = (uint32_t)dtype, .rank = (size_t)rank, .shape = dims[i], .data = data, .byte_len = len};
  }

  TesseraOutputs *outputs = NULL;
  if (tessera_session_run(session, inputs, given, &outputs) != TESSERA_STATUS_OK) return fail("run");
  for (size_t j = 0; j < tessera_outputs_count(outputs); j++) {
    TesseraTensor t;
    if (tessera_outputs_get(outputs, j, &t) != TESSERA_STATUS_OK) return fail("output");
    printf("output_%zu: %s[", j, tessera_dtype_name(t.dtype));
    for (size_t d = 0; d < t.rank; d++) printf(d ? ", %lld" : "%lld", (long long)t.shape[d]);
    printf("] %zu bytes\n", t.byte_len);
    char path[4096];
    snprintf(path, sizeof path, "%s/output_%zu.bin", argv[2], j);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(t.data, 1, t.byte_len, f) != t.byte_len) {
      fprintf(stderr, "run_model: cannot write %s\n", path);
      return 1;
    }
    fclose(f);
  }

  /* Errors are values: a wrong input count is refused with a message naming the inputs. */
  TesseraOutputs *none = NULL;
  if (tessera_session_run(session, inputs, 0, &none) == TESSERA_STATUS_OK && n_in > 0) {
    fprintf(stderr, "run_model: a run without inputs was accepted\n");
    return 1;
  }
  printf("refused as expected: %s\n", tessera_last_error());

  tessera_outputs_free(outputs);
  for (size_t i = 0; i < given; i++) free((void *)inputs[i].data);
  free(inputs);
  free(dims);
  tessera_session_free(session);
  return 0;
}
