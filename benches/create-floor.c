/* create-floor.c -- the floor of a small-file restore: the bare system calls that make a tree's
 * files, with nothing read, decoded or checked. benches/smallfiles.sh builds and runs it (FLOOR=1)
 * beside the tools, so a restore's time can be read against what the kernel alone costs.
 *
 *   create-floor TARGET THREADS < LIST
 *
 * LIST: one entry per line, directories first and parents before children: "-1 PATH" makes
 * directory PATH (mkdirat, 0755); "SIZE PATH" makes regular file PATH of SIZE bytes. PATH is
 * relative to TARGET (which must exist). Directories are made first, in order, on one thread;
 * then the files are split into THREADS contiguous parts (neighbours share a directory), each
 * made by one thread: openat(O_CREAT | O_EXCL | O_NOFOLLOW), pwrite of SIZE pseudo-random bytes
 * (1 MiB at a time), futimens, close -- the calls a restorer cannot do without (ferry adds one
 * fstat per file). Exits 1 at the first failure, naming the path. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct entry { long size; char *path; };
struct part { struct entry *e; size_t n; };

static int root;
static char data[1 << 20];

/* Names what failed (errno's reason) and exits 1. */
static void die(const char *what) {
  perror(what);
  exit(1);
}

static void *make_files(void *arg) {
  struct part *p = arg;
  const struct timespec times[2] = {{1600000000, 0}, {1600000000, 0}};
  for (size_t i = 0; i < p->n; i++) {
    struct entry *e = &p->e[i];
    int fd = openat(root, e->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) die(e->path);
    for (long off = 0; off < e->size; off += sizeof data) {
      size_t n = e->size - off < (long)sizeof data ? (size_t)(e->size - off) : sizeof data;
      if (pwrite(fd, data, n, off) != (ssize_t)n) die(e->path);
    }
    if (futimens(fd, times) != 0 || close(fd) != 0) die(e->path);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3 || atoi(argv[2]) < 1) {
    fprintf(stderr, "usage: create-floor TARGET THREADS < LIST\n");
    return 2;
  }
  root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) die(argv[1]);
  for (size_t i = 0; i < sizeof data; i++) data[i] = (char)(i * 2654435761u >> 13);
  size_t cap = 1 << 16, n = 0;
  struct entry *files = malloc(cap * sizeof *files);
  if (!files) die("create-floor");
  char *line = NULL;
  size_t len = 0;
  ssize_t got;
  while ((got = getline(&line, &len, stdin)) > 0) {
    if (line[got - 1] == '\n') line[got - 1] = 0;
    char *sp = strchr(line, ' ');
    if (!sp) { fprintf(stderr, "create-floor: bad line: %s\n", line); return 2; }
    long size = strtol(line, NULL, 10);
    if (size < 0) {
      if (mkdirat(root, sp + 1, 0755) != 0) die(sp + 1);
      continue;
    }
    if (n == cap && !(files = realloc(files, (cap *= 2) * sizeof *files))) die("create-floor");
    files[n].size = size;
    if (!(files[n++].path = strdup(sp + 1))) die("create-floor");
  }
  size_t threads = (size_t)atoi(argv[2]), per = (n + threads - 1) / threads;
  pthread_t tid[threads];
  struct part parts[threads];
  for (size_t t = 0; t < threads; t++) {
    size_t from = t * per < n ? t * per : n, to = from + per < n ? from + per : n;
    parts[t] = (struct part){files + from, to - from};
    if (pthread_create(&tid[t], NULL, make_files, &parts[t]) != 0) { fprintf(stderr, "create-floor: pthread_create failed\n"); return 1; }
  }
  for (size_t t = 0; t < threads; t++) pthread_join(tid[t], NULL);
  return 0;
}
