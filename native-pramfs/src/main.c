/* pramfs: mkfs, mount, fsck, info and ls for PramFS regions (see FORMAT.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pramfs.h"

int pf_mount_main(int argc, char **argv);

static void usage(FILE *f)
{
    fprintf(f,
            "usage:\n"
            "  pramfs mkfs [--force] [--meta-size BYTES] REGION[,REGION...]\n"
            "  pramfs mount [-f] [-o FUSE_OPTIONS] [--commit-interval MS] REGION[,REGION...] DIR\n"
            "  pramfs fsck [-r] REGION[,REGION...]\n"
            "  pramfs info REGION[,REGION...]\n"
            "  pramfs ls REGION[,REGION...]\n"
            "REGION: a regular file or a block device such as /dev/pmem0.\n"
            "mkfs refuses a region whose first 64 KiB are not all zero and hold no PramFS, unless --force.\n"
            "mount runs in the background unless -f; unmount with fusermount3 -u DIR (or umount DIR).\n"
            "fsck exit codes: 0 clean, 1 problems repaired (-r), 2 corrupt (not repaired), 4 cannot check\n"
            "(no such region, in use, not a PramFS).\n");
}

/* A region with anything in its first 64 KiB that is not ours is someone's data. */
static int check_blank_or_ours(const char *regions)
{
    char *copy = strdup(regions), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        int fd = open(tok, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "pramfs mkfs: cannot open %s: %s\n", tok, strerror(errno));
            rc = 1;
            break;
        }
        static unsigned char buf[65536];
        ssize_t n = pread(fd, buf, sizeof buf, 0);
        close(fd);
        bool blank = true;
        for (ssize_t k = 0; k < n && blank; k++)
            blank = buf[k] == 0;
        bool ours = n >= 8 && (memcmp(buf, "PRAMFSSB", 8) == 0 || memcmp(buf, "PRAMFSRG", 8) == 0 ||
                               (n >= 4104 && memcmp(buf + 4096, "PRAMFSSB", 8) == 0));
        if (!blank && !ours) {
            fprintf(stderr,
                    "pramfs mkfs: refusing to format %s: its first 64 KiB hold data that is not a PramFS; "
                    "if it is really disposable, pass --force\n",
                    tok);
            rc = 1;
        }
    }
    free(copy);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "mount") == 0)
        return pf_mount_main(argc - 2, argv + 2);
    if (strcmp(cmd, "mkfs") == 0) {
        bool force = false;
        uint64_t meta = 0;
        const char *regions = NULL;
        for (int k = 2; k < argc; k++) {
            if (strcmp(argv[k], "--force") == 0)
                force = true;
            else if (strcmp(argv[k], "--meta-size") == 0 && k + 1 < argc)
                meta = strtoull(argv[++k], NULL, 0);
            else if (!regions)
                regions = argv[k];
            else {
                usage(stderr);
                return 2;
            }
        }
        if (!regions) {
            usage(stderr);
            return 2;
        }
        if (!force && check_blank_or_ours(regions))
            return 1;
        struct pf_report rep = {.out = stderr};
        int rc = pf_mkfs(regions, meta, &rep);
        if (rc) {
            fprintf(stderr, "pramfs mkfs: %s: failed: %s\n", regions, rep.first[0] ? rep.first : strerror(-rc));
            return 1;
        }
        return 0;
    }
    if (strcmp(cmd, "fsck") == 0) {
        bool repair = false;
        const char *regions = NULL;
        for (int k = 2; k < argc; k++) {
            if (strcmp(argv[k], "-r") == 0 || strcmp(argv[k], "--repair") == 0)
                repair = true;
            else if (!regions)
                regions = argv[k];
            else {
                usage(stderr);
                return PF_FSCK_ERROR;
            }
        }
        if (!regions) {
            usage(stderr);
            return PF_FSCK_ERROR;
        }
        return pf_fsck(regions, repair, stdout);
    }
    if ((strcmp(cmd, "info") == 0 || strcmp(cmd, "ls") == 0) && argc == 3) {
        int rc = cmd[0] == 'i' ? pf_info(argv[2], stdout) : pf_ls(argv[2], stdout);
        if (rc) {
            fprintf(stderr, "pramfs %s: %s: failed: %s\n", cmd, argv[2], strerror(-rc));
            return 1;
        }
        return 0;
    }
    usage(stderr);
    return 2;
}
