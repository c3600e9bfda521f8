/*
 * The benchmark's client for the two loads a Python client cannot drive
 * fast enough to keep a fast server busy: one line at a time over many
 * connections (requests/s and latency), and new connections (connect, one
 * line, quit, read to EOF). One thread, one epoll loop, 127.0.0.1 only.
 *
 *   bench_client rr PORT CONNECTIONS SECONDS
 *   bench_client new PORT CONCURRENCY SECONDS
 *
 * prints one line: "count N seconds S cpu C p50 P p99 Q" (latencies in
 * microseconds, 0 for the new-connections load); exits 1 on any wrong
 * reply or failed connection.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_LENGTH 64
#define MAX_EVENTS 256
#define MAX_SAMPLES 20000000

static char line[LINE_LENGTH];
static char reply[LINE_LENGTH];
static struct sockaddr_in server;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The same clock the kernel stamps received packets with (SO_TIMESTAMPNS). */
static double wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Read like read(2), and give when the kernel received the last of it: a reply's
 * latency then ends when it reached this socket, not when this busy client got
 * round to it, which would blame the client's own queue on the server. */
static ssize_t read_stamped(int fd, char *buffer, size_t size, double *arrived) {
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec vector = {.iov_base = buffer, .iov_len = size};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1,
                             .msg_control = control, .msg_controllen = sizeof control};
    ssize_t got = recvmsg(fd, &message, 0);
    *arrived = wall();
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(c), sizeof stamp);
            *arrived = stamp.tv_sec + stamp.tv_nsec / 1e9;
        }
    }
    return got;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 +
           usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static void fail(const char *what) {
    fprintf(stderr, "bench_client: %s: %s\n", what, errno ? strerror(errno) : "wrong reply");
    exit(1);
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int connect_to_server(int blocking) {
    int fd = socket(AF_INET, SOCK_STREAM | (blocking ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0) fail("socket");
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)
        fail("connect");
    return fd;
}

/* One line in flight per connection; a reply is checked byte for byte. */
static int request_response(int connections, double seconds) {
    int poller = epoll_create1(0);
    int *received = calloc(65536, sizeof(int));
    double *sent_at = calloc(65536, sizeof(double));
    double *latencies = malloc(MAX_SAMPLES * sizeof(double));
    long count = 0;
    struct epoll_event events[MAX_EVENTS];
    double start = now(), clock = start;
    for (int i = 0; i < connections; i++) {
        int fd = connect_to_server(1), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
        sent_at[fd] = wall();
        if (write(fd, line, LINE_LENGTH) != LINE_LENGTH) fail("write");
    }
    double cpu = cpu_seconds();
    while (clock < start + seconds) {
        int ready = epoll_wait(poller, events, MAX_EVENTS, 1000);
        clock = now();
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            char buffer[LINE_LENGTH];
            double arrived;
            ssize_t size = read_stamped(fd, buffer, LINE_LENGTH - received[fd], &arrived);
            if (size <= 0) fail("read");
            if (memcmp(buffer, reply + received[fd], size) != 0) { errno = 0; fail("compare"); }
            received[fd] += size;
            if (received[fd] < LINE_LENGTH) continue;
            received[fd] = 0;
            if (count < MAX_SAMPLES) latencies[count] = arrived - sent_at[fd];
            count++;
            sent_at[fd] = wall();
            if (write(fd, line, LINE_LENGTH) != LINE_LENGTH) fail("write");
        }
    }
    long samples = count < MAX_SAMPLES ? count : MAX_SAMPLES;
    qsort(latencies, samples, sizeof(double), compare_doubles);
    printf("count %ld seconds %.6f cpu %.6f p50 %.1f p99 %.1f\n", count, clock - start,
           cpu_seconds() - cpu, samples ? latencies[samples / 2] * 1e6 : 0.0,
           samples ? latencies[samples * 99 / 100] * 1e6 : 0.0);
    return 0;
}

static const char quit[] = "quit\n";

static void open_one(int poller, int *received) {
    int fd = connect_to_server(0);
    received[fd] = 0;
    struct epoll_event event = {.events = EPOLLOUT, .data.fd = fd};
    epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
}

/* Connect, send one line and quit, read the reply to EOF, close, repeat. */
static int new_connections(int concurrency, double seconds) {
    int poller = epoll_create1(0);
    int *received = calloc(65536, sizeof(int));
    char request[LINE_LENGTH + sizeof quit];
    memcpy(request, line, LINE_LENGTH);
    memcpy(request + LINE_LENGTH, quit, sizeof quit - 1);
    long count = 0;
    struct epoll_event events[MAX_EVENTS];
    double cpu = cpu_seconds(), start = now(), clock = start;
    for (int i = 0; i < concurrency; i++) open_one(poller, received);
    while (clock < start + seconds) {
        int ready = epoll_wait(poller, events, MAX_EVENTS, 1000);
        clock = now();
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (events[i].events & EPOLLOUT) {
                int error = 0;
                socklen_t length = sizeof error;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
                if (error) { errno = error; fail("connect"); }
                if (write(fd, request, sizeof request - 1) != (ssize_t)(sizeof request - 1))
                    fail("write");
                struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(poller, EPOLL_CTL_MOD, fd, &event);
                continue;
            }
            char buffer[256];
            ssize_t size = read(fd, buffer, sizeof buffer);
            if (size < 0) fail("read");
            if (size > 0) {
                if (received[fd] + size > LINE_LENGTH ||
                    memcmp(buffer, reply + received[fd], size) != 0) { errno = 0; fail("compare"); }
                received[fd] += size;
                continue;
            }
            if (received[fd] != LINE_LENGTH) { errno = 0; fail("short reply"); }
            close(fd);
            count++;
            open_one(poller, received);
        }
    }
    printf("count %ld seconds %.6f cpu %.6f p50 0 p99 0\n", count, clock - start,
           cpu_seconds() - cpu);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench_client rr|new PORT CONNECTIONS SECONDS\n");
        return 2;
    }
    for (int i = 0; i < LINE_LENGTH - 1; i++) line[i] = "abcdefghijklmnopqrstuvwxyz"[i % 26];
    line[LINE_LENGTH - 1] = '\n';
    for (int i = 0; i < LINE_LENGTH - 1; i++) reply[i] = line[LINE_LENGTH - 2 - i];
    reply[LINE_LENGTH - 1] = '\n';
    server.sin_family = AF_INET;
    server.sin_port = htons(atoi(argv[2]));
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int connections = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (strcmp(argv[1], "rr") == 0) return request_response(connections, seconds);
    if (strcmp(argv[1], "new") == 0) return new_connections(connections, seconds);
    fprintf(stderr, "bench_client: unknown load %s\n", argv[1]);
    return 2;
}
