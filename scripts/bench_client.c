/*
 * The benchmark's client for the two loads a Python client cannot drive
 * fast enough to keep a fast server busy: one line at a time over many
 * connections (requests/s and latency), and new connections (connect, one
 * line, quit, read to EOF). One thread, one epoll loop, 127.0.0.1 only.
 *
 *   bench_client rr PORT CONNECTIONS SECONDS [HOSTILE_LINES [HOSTILE_REPLIES]]
 *   bench_client new PORT CONCURRENCY SECONDS
 *
 * prints one line: "count N seconds S cpu C p50 P p99 Q" (latencies in
 * microseconds, 0 for the new-connections load); exits 1 on any wrong
 * reply or failed connection.
 *
 * With HOSTILE_LINES (a file of whole lines), one more connection pipelines
 * those lines over and over for the whole run, reading its replies as they
 * come, and the line printed ends " hostile_lines H" (replies it got while
 * the clock ran): the one-line-at-a-time clients' latency then shows what a
 * neighbour's costly lines do to them. The hostile client's first reply is awaited before
 * the clock starts, so the server is busy with it from the first request on.
 * Its replies are compared with HOSTILE_REPLIES when given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#define HOSTILE_WINDOW (256 * 1024)
#define HOSTILE_PATIENCE 30.0

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

/* The hostile connection: its lines, the replies they must get (twice over, so
 * that any window of one period is one memcmp; NULL: not checked), and how far
 * sending and receiving have gone. */
static struct {
    int fd;
    char *lines, *replies;
    long period, sent, received, answered;
} hostile = {.fd = -1};

static char *read_file(const char *path, long *size, int twice) {
    FILE *file = fopen(path, "rb");
    if (!file || fseek(file, 0, SEEK_END) != 0) fail(path);
    *size = ftell(file);
    char *data = malloc(*size * (twice ? 2 : 1));
    rewind(file);
    if (*size <= 0 || !data || fread(data, 1, *size, file) != (size_t)*size) fail(path);
    fclose(file);
    if (twice) memcpy(data + *size, data, *size);
    return data;
}

/* Keep up to HOSTILE_WINDOW bytes in flight; called after every read, so the
 * server always has lines waiting. */
static void hostile_send(void) {
    long room;
    while ((room = HOSTILE_WINDOW - (hostile.sent - hostile.received)) > 0) {
        long offset = hostile.sent % hostile.period;
        long left = hostile.period - offset;
        ssize_t size = write(hostile.fd, hostile.lines + offset, left < room ? left : room);
        if (size < 0 && errno == EAGAIN) return;
        if (size <= 0) fail("hostile write");
        hostile.sent += size;
    }
}

static void hostile_read(void) {
    static char buffer[HOSTILE_WINDOW];
    ssize_t size = read(hostile.fd, buffer, sizeof buffer);
    if (size == 0) {
        fprintf(stderr, "bench_client: the server closed the hostile connection\n");
        exit(1);
    }
    if (size < 0) fail("hostile read");
    long offset = hostile.received % hostile.period;
    if (hostile.replies && memcmp(buffer, hostile.replies + offset, size) != 0) {
        errno = 0;
        fail("hostile compare");
    }
    for (char *end = buffer; (end = memchr(end, '\n', buffer + size - end)); end++)
        hostile.answered++;
    hostile.received += size;
    hostile_send();
}

static void start_hostile(int poller, const char *lines, const char *replies) {
    long size;
    hostile.lines = read_file(lines, &hostile.period, 0);
    if (replies) {
        hostile.replies = read_file(replies, &size, 1);
        if (size != hostile.period) { errno = 0; fail("hostile replies' length"); }
    }
    /* a read (at most a window) must be one memcmp within the replies twice over */
    if (hostile.period < HOSTILE_WINDOW) { errno = 0; fail("hostile lines under a window"); }
    int one = 1;
    hostile.fd = connect_to_server(1);
    setsockopt(hostile.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(hostile.fd, F_SETFL, O_NONBLOCK);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = hostile.fd};
    epoll_ctl(poller, EPOLL_CTL_ADD, hostile.fd, &event);
    hostile_send();
    double deadline = now() + HOSTILE_PATIENCE;
    while (hostile.received == 0) {
        if (now() > deadline) { errno = 0; fail("no reply to the hostile lines"); }
        if (epoll_wait(poller, &event, 1, 1000) == 1) hostile_read();
    }
    hostile.answered = 0;
}

/* One line in flight per connection; a reply is checked byte for byte. */
static int request_response(int connections, double seconds, const char *hostile_lines,
                            const char *hostile_replies) {
    int poller = epoll_create1(0);
    int *received = calloc(65536, sizeof(int));
    double *sent_at = calloc(65536, sizeof(double));
    double *latencies = malloc(MAX_SAMPLES * sizeof(double));
    long count = 0;
    struct epoll_event events[MAX_EVENTS];
    if (hostile_lines) start_hostile(poller, hostile_lines, hostile_replies);
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
            if (fd == hostile.fd) { hostile_read(); continue; }
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
    printf("count %ld seconds %.6f cpu %.6f p50 %.1f p99 %.1f", count, clock - start,
           cpu_seconds() - cpu, samples ? latencies[samples / 2] * 1e6 : 0.0,
           samples ? latencies[samples * 99 / 100] * 1e6 : 0.0);
    if (hostile_lines) printf(" hostile_lines %ld", hostile.answered);
    printf("\n");
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
    int rr = argc >= 2 && strcmp(argv[1], "rr") == 0;
    if (argc < 5 || argc > (rr ? 7 : 5)) {
        fprintf(stderr, "usage: bench_client rr PORT CONNECTIONS SECONDS "
                        "[HOSTILE_LINES [HOSTILE_REPLIES]]\n"
                        "       bench_client new PORT CONCURRENCY SECONDS\n");
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
    if (rr) return request_response(connections, seconds, argc > 5 ? argv[5] : NULL,
                                    argc > 6 ? argv[6] : NULL);
    if (strcmp(argv[1], "new") == 0) return new_connections(connections, seconds);
    fprintf(stderr, "bench_client: unknown load %s\n", argv[1]);
    return 2;
}
