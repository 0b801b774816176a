/*
 * supervisor.c — child processes of this binary: start, wait for a port,
 * measure, stop (see supervisor.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/supervisor.h"

static volatile sig_atomic_t g_stop_signal;
static volatile pid_t g_children_pgid;
static struct sigaction g_old_int, g_old_term, g_old_hup;

static void on_signal(int sig)
{
    if (g_children_pgid > 0)
        kill(-g_children_pgid, SIGTERM);
    g_stop_signal = sig;
}

void sup_catch_signals(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &g_old_int);
    sigaction(SIGTERM, &sa, &g_old_term);
    sigaction(SIGHUP, &sa, &g_old_hup);
    signal(SIGPIPE, SIG_IGN);
}

void sup_restore_signals(void)
{
    sigaction(SIGINT, &g_old_int, NULL);
    sigaction(SIGTERM, &g_old_term, NULL);
    sigaction(SIGHUP, &g_old_hup, NULL);
}

bool sup_stopping(void)
{
    return g_stop_signal != 0;
}

int sup_stop_signal(void)
{
    return (int)g_stop_signal;
}

void sup_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

bool sup_init(supervisor *s, const char *who)
{
    memset(s, 0, sizeof *s);
    s->who = who;
    ssize_t len = readlink("/proc/self/exe", s->self, sizeof s->self - 1);
    if (len <= 0) {
        fprintf(stderr, "%s: cannot find my own binary (/proc/self/exe)\n", who);
        return false;
    }
    s->self[len] = '\0';
    s->parent = getpid();
    return true;
}

static int find(const supervisor *s, const char *name);

/* Every child joins one process group, so one kill reaches them all. */
pid_t sup_start(supervisor *s, const char *name, char *const argv[])
{
    /* A child stopped with sup_kill() is started again in its own place,
     * its log continued. */
    int slot = s->n_kids;
    for (int i = 0; i < s->n_kids; i++)
        if (s->kids[i].pid == 0 && strcmp(s->kids[i].name, name) == 0)
            slot = i;
    bool again = slot < s->n_kids;
    if (slot == SUP_MAX_CHILDREN)
        return -1;
    char log[PATH_MAX + 64];
    snprintf(log, sizeof log, "%s/%s.log", s->dir, name);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != s->parent)
            _exit(126); /* the parent died before we got here */
        setpgid(0, s->pgid);
        signal(SIGINT, SIG_IGN); /* the parent decides when we stop */
        signal(SIGTERM, SIG_DFL);
        int fd = open(log, O_WRONLY | O_CREAT | (again ? O_APPEND : O_TRUNC) | O_CLOEXEC, 0600);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || null < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(126);
        execv(s->self, argv);
        _exit(127);
    }
    setpgid(pid, s->pgid ? s->pgid : pid); /* also here: no race with the child */
    if (!s->pgid) {
        s->pgid = pid;
        g_children_pgid = pid;
    }
    s->kids[slot].pid = pid;
    snprintf(s->kids[slot].name, sizeof s->kids[slot].name, "%s", name);
    if (!again)
        s->n_kids++;
    return pid;
}

bool sup_kill(supervisor *s, const char *name, int sig)
{
    int i = find(s, name);
    if (i < 0 || s->kids[i].pid <= 0)
        return false;
    kill(s->kids[i].pid, sig);
    int st;
    while (waitpid(s->kids[i].pid, &st, 0) < 0 && errno == EINTR)
        ;
    s->kids[i].pid = 0;
    return true;
}

void sup_show_log_tail(const supervisor *s, const char *name)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.log", s->dir, name);
    esim_buf b = {0};
    if (esim_read_file(path, 16u * 1024u * 1024u, &b, NULL) != ESIM_OK || !b.len) {
        esim_buf_free(&b);
        return;
    }
    size_t start = b.len, lines = 0;
    while (start > 0 && lines < 8)
        if (b.data[--start] == '\n' && start + 1 < b.len)
            lines++;
    fprintf(stderr, "---- %s.log (last lines)\n%s%s", name,
            (const char *)b.data + start + (start > 0), b.data[b.len - 1] == '\n' ? "" : "\n");
    esim_buf_free(&b);
}

bool sup_alive(supervisor *s)
{
    for (int i = 0; i < s->n_kids; i++) {
        if (s->kids[i].pid <= 0)
            continue;
        int st;
        if (waitpid(s->kids[i].pid, &st, WNOHANG) == s->kids[i].pid) {
            fprintf(stderr, "%s: the %s stopped unexpectedly (%s %d)\n", s->who, s->kids[i].name,
                    WIFEXITED(st) ? "exit status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            s->kids[i].pid = 0;
            sup_show_log_tail(s, s->kids[i].name);
            return false;
        }
    }
    return true;
}

static int read_port_file(const char *path)
{
    esim_buf b = {0};
    int port = 0;
    if (esim_read_file(path, 64, &b, NULL) == ESIM_OK && b.len)
        port = atoi((const char *)b.data);
    esim_buf_free(&b);
    return port > 0 && port < 65536 ? port : 0;
}

bool sup_wait_port_file(supervisor *s, const char *name, int timeout_ms, int *port)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.port", s->dir, name);
    for (int64_t until = esim_mono_ms() + timeout_ms; esim_mono_ms() < until;) {
        if (sup_stopping() || !sup_alive(s))
            return false;
        if ((*port = read_port_file(path)) > 0)
            return true;
        sup_sleep_ms(20);
    }
    fprintf(stderr, "%s: the %s did not start within %d s\n", s->who, name, timeout_ms / 1000);
    sup_show_log_tail(s, name);
    return false;
}

static int find(const supervisor *s, const char *name)
{
    for (int i = 0; i < s->n_kids; i++)
        if (strcmp(s->kids[i].name, name) == 0)
            return i;
    return -1;
}

bool sup_started(const supervisor *s, const char *name)
{
    return find(s, name) >= 0;
}

bool sup_usage(const supervisor *s, const char *name, esim_proc_usage *out)
{
    int i = find(s, name);
    if (i < 0 || s->kids[i].pid <= 0) {
        memset(out, 0, sizeof *out);
        return false;
    }
    return esim_proc_usage_read(s->kids[i].pid, out) == ESIM_OK;
}

void sup_stop_all(supervisor *s)
{
    if (s->pgid > 0)
        kill(-s->pgid, SIGTERM);
    int64_t until = esim_mono_ms() + 5000;
    for (;;) {
        bool any = false;
        for (int i = 0; i < s->n_kids; i++) {
            if (s->kids[i].pid <= 0)
                continue;
            pid_t r = waitpid(s->kids[i].pid, NULL, WNOHANG);
            if (r == s->kids[i].pid || (r < 0 && errno == ECHILD))
                s->kids[i].pid = 0;
            else
                any = true;
        }
        if (!any)
            break;
        if (esim_mono_ms() > until) {
            if (s->pgid > 0)
                kill(-s->pgid, SIGKILL);
            for (int i = 0; i < s->n_kids; i++)
                if (s->kids[i].pid > 0) {
                    kill(s->kids[i].pid, SIGKILL);
                    waitpid(s->kids[i].pid, NULL, 0);
                    s->kids[i].pid = 0;
                }
            break;
        }
        sup_sleep_ms(20);
    }
    s->pgid = 0;
    g_children_pgid = 0;
}
