/*
 * ports.h — a TCP port a test's part can bind, close and bind again later
 * (a server it kills and restarts, a daemon it starts that binds the port
 * itself): below the kernel's ephemeral range (ip_local_port_range), where
 * only an explicit bind takes a port. A port that bind(0) handed out is
 * free again the moment its part lets it go, and before the part binds it
 * again any process's outgoing connection or bind(0) listener may take it
 * (the other tests under ctest -j, the simulators' own connections); the
 * part then fails with "Address already in use".
 */
#ifndef ESIM_TESTS_PORTS_H
#define ESIM_TESTS_PORTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>

/* Whether 127.0.0.1:|port| can be bound now (no SO_REUSEADDR: a port with
 * connections still in TIME_WAIT is passed over too). */
static inline bool test_port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    bool free_now = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return free_now;
}

/* The first of |count| consecutive ports, all free now, between 10000 and
 * the ephemeral range's start, from a random start (getrandom, not rand():
 * a test's seeded rand() sequence is left alone); 0 when none was found
 * in 500 tries or the range leaves no room below it (the caller takes an
 * ephemeral port then, or fails). */
static inline int test_port_below_ephemeral(int count)
{
    int low = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d", &low) != 1)
            low = 32768;
        fclose(f);
    }
    const int first = 10000;
    if (low - count - first < 1000)
        return 0;
    uint32_t x = 0;
    if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x)
        x = (uint32_t)getpid() * 2654435761u;
    uint32_t span = (uint32_t)(low - count + 1 - first);
    for (int tries = 0; tries < 500; tries++) {
        int port = first + (int)((x + (uint32_t)tries * 7919u) % span);
        int k = 0;
        while (k < count && test_port_free(port + k))
            k++;
        if (k == count)
            return port;
    }
    return 0;
}

#endif
