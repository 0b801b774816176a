/*
 * supervisor.h — runs parts of the system as child processes of this very
 * binary (`esim-mdm apns-mock`, `esim-mdm serve`, ...): starts them with
 * their output in DIR/NAME.log, waits for the port each one writes to
 * DIR/NAME.port, measures their memory and CPU time, and stops every one of
 * them whatever happens: a signal to the parent stops them, and each dies
 * with the parent (PR_SET_PDEATHSIG) even if the parent is killed.
 *
 * One supervisor per process: the signal handler needs the children's
 * process group, so it lives in this file's process-wide state (cli/ may
 * keep such state). Messages go to stderr, prefixed with |who|.
 */
#ifndef ESIM_CLI_SUPERVISOR_H
#define ESIM_CLI_SUPERVISOR_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include "core/internal.h"

#define SUP_MAX_CHILDREN 12

typedef struct {
    const char *who; /* message prefix, "esim-mdm demo" */
    const char *dir; /* NAME.log and NAME.port live here; set before sup_start() */
    char self[PATH_MAX];
    pid_t parent, pgid;
    struct {
        pid_t pid; /* 0 once it has stopped and been reaped */
        char name[32];
    } kids[SUP_MAX_CHILDREN];
    int n_kids;
} supervisor;

/* Readies |s| to start copies of this binary (/proc/self/exe). False, with
 * a message, when that cannot be found. */
bool sup_init(supervisor *s, const char *who);

/* Until sup_restore_signals(): SIGINT, SIGTERM and SIGHUP stop every child
 * and make sup_stopping() true; SIGPIPE is ignored. */
void sup_catch_signals(void);
void sup_restore_signals(void);
bool sup_stopping(void);
int sup_stop_signal(void); /* the signal that arrived, or 0 */

/* Starts `esim-mdm ARGV[1]...` as child NAME, its stdout and stderr in
 * DIR/NAME.log. Returns its pid, or -1 (too many children, fork failed). */
pid_t sup_start(supervisor *s, const char *name, char *const argv[]);

/* Sends |sig| to child NAME and waits for it to end (a crash test's
 * SIGKILL); sup_start() with the same NAME then starts it again in its
 * place, appending to its log. False when no such child runs. */
bool sup_kill(supervisor *s, const char *name, int sig);

/* True while every child runs; otherwise says which one stopped and shows
 * the end of its log. */
bool sup_alive(supervisor *s);

/* Prints the last lines of DIR/NAME.log to stderr, to say why it failed. */
void sup_show_log_tail(const supervisor *s, const char *name);

/* Waits up to |timeout_ms| for DIR/NAME.port to hold a port. False when a
 * child stops, a signal arrives or time runs out (said on stderr). */
bool sup_wait_port_file(supervisor *s, const char *name, int timeout_ms, int *port);

/* The memory and CPU time of child NAME now. False (|out| zeroed) when no
 * such child runs. */
bool sup_usage(const supervisor *s, const char *name, esim_proc_usage *out);
/* True when child NAME was started (running or not). */
bool sup_started(const supervisor *s, const char *name);

/* SIGTERM to every child, up to 5 s of grace, then SIGKILL; all reaped. */
void sup_stop_all(supervisor *s);

/* Sleeps |ms| milliseconds (a signal may cut it short). */
void sup_sleep_ms(long ms);

#endif
