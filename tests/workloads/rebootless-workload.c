/* A stateful workload for checkpoint/restore tests.
 *
 *   rebootless-workload DIR MEM_MIB
 *
 * Holds MEM_MIB MiB of patterned memory, a regular file open at a known
 * offset, a unix socket pair with unread data, a pipe to a child process, and
 * a second thread. Every 50 ms it writes an increasing counter to DIR/counter.
 * When DIR/check-request appears it re-verifies all of that state and writes
 * DIR/check-result ("ok ..." or "bad ..."). When DIR/touch-request appears,
 * holding "FROM_MIB MIB", it writes every page of that part of its memory back
 * with the value it holds (the contents and checksum stay; the kernel's
 * soft-dirty tracking sees the pages written) and writes DIR/touch-result
 * ("touched N pages"). DIR/ready holds the memory checksum computed at start.
 * Writes go through rename so readers never see a partial file. Runs until
 * killed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir;
static atomic_ulong thread_ticks;

static void put(const char *name, const char *text)
{
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static uint64_t fill_and_sum(uint8_t *mem, size_t len, int fill)
{
    uint64_t x = 0x9e3779b97f4a7c15ull, sum = 0;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (fill)
            memcpy(mem + i, &x, 8);
        uint64_t v;
        memcpy(&v, mem + i, 8);
        sum = sum * 31 + v;
    }
    return sum;
}

static void *ticker(void *arg)
{
    (void)arg;
    for (;;) {
        atomic_fetch_add(&thread_ticks, 1);
        usleep(20000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DIR MEM_MIB\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    size_t len = (size_t)atol(argv[2]) << 20;
    uint8_t *mem = len ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
    if (len && mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t sum = len ? fill_and_sum(mem, len, 1) : 0;

    char path[4096];
    snprintf(path, sizeof path, "%s/data", dir);
    int data = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    char block[1000];
    memset(block, 'd', sizeof block);
    if (data < 0 || write(data, block, sizeof block) != (ssize_t)sizeof block || lseek(data, 123, SEEK_SET) != 123) {
        perror("data file");
        return 1;
    }

    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0 || write(sp[0], "hello", 5) != 5) {
        perror("socketpair");
        return 1;
    }

    int pp[2];
    if (pipe(pp) != 0) {
        perror("pipe");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        /* the child counts the lines its parent sends through the pipe */
        close(pp[1]);
        FILE *in = fdopen(pp[0], "r");
        char line[64];
        unsigned long lines = 0;
        while (fgets(line, sizeof line, in)) {
            char text[64];
            snprintf(text, sizeof text, "%lu\n", ++lines);
            put("child-counter", text);
        }
        _exit(0);
    }
    close(pp[0]);

    pthread_t t;
    pthread_create(&t, NULL, ticker, NULL);

    char text[512];
    snprintf(text, sizeof text, "%llu\n", (unsigned long long)sum);
    put("ready", text);

    for (unsigned long counter = 1;; counter++) {
        snprintf(text, sizeof text, "%lu\n", counter);
        put("counter", text);
        if (dprintf(pp[1], "%lu\n", counter) < 0) {
            put("check-result", "bad pipe write failed\n");
        }

        snprintf(path, sizeof path, "%s/touch-request", dir);
        FILE *touch = fopen(path, "r");
        if (touch) {
            unsigned long from = 0, mib = 0;
            int fields = fscanf(touch, "%lu %lu", &from, &mib);
            fclose(touch);
            unlink(path);
            size_t start = (size_t)from << 20, end = start + ((size_t)mib << 20);
            if (fields == 2 && from <= len >> 20 && mib <= (len >> 20) - from) {
                volatile uint8_t *v = mem;
                unsigned long pages = 0;
                for (size_t i = start; i < end; i += 4096, pages++)
                    v[i] = v[i];
                snprintf(text, sizeof text, "touched %lu pages\n", pages);
            } else {
                snprintf(text, sizeof text, "bad touch request\n");
            }
            put("touch-result", text);
        }

        snprintf(path, sizeof path, "%s/check-request", dir);
        if (access(path, F_OK) == 0) {
            unlink(path);
            uint64_t now = len ? fill_and_sum(mem, len, 0) : 0;
            off_t off = lseek(data, 0, SEEK_CUR);
            char peek[8] = {0};
            ssize_t n = recv(sp[1], peek, sizeof peek - 1, MSG_PEEK | MSG_DONTWAIT);
            unsigned long before = atomic_load(&thread_ticks);
            usleep(100000);
            unsigned long after = atomic_load(&thread_ticks);
            int ok = now == sum && off == 123 && n == 5 && strcmp(peek, "hello") == 0 && after > before;
            snprintf(text, sizeof text, "%s mem=%llu expected=%llu offset=%ld socket=%s thread=%lu->%lu\n",
                     ok ? "ok" : "bad", (unsigned long long)now, (unsigned long long)sum, (long)off,
                     n > 0 ? peek : "(none)", before, after);
            put("check-result", text);
        }
        usleep(50000);
    }
}
