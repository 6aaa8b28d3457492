/* PID 1 of the testbed VM: runs the stage-2 script, reaps every orphan at
 * once (CRIU restores need dead PIDs to be gone quickly), and powers the VM
 * off when the script ends. */
#include <errno.h>
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: reaper SCRIPT\n");
        return 2;
    }
    pid_t child = fork();
    if (child == 0) {
        execv("/bin/sh", (char *[]){"sh", argv[1], NULL});
        perror("reaper: exec /bin/sh");
        _exit(127);
    }
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid == child || (pid < 0 && errno != EINTR))
            break;
    }
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
