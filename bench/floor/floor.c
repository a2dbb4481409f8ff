/*
 * floor.c: the floor relay of bench/run.sh. It does what any RTP relay must
 * do and nothing more: epoll over one UDP socket per call leg,
 * recvmmsg of what is queued, sendmmsg of the same datagrams out of the
 * other leg's socket to that leg's fixed remote. No parsing, no latching,
 * no counters. Everything it binds is on 127.0.0.1.
 *
 * Protocol (the same as bench/sidebyside's rtpbridge child): stdin lines
 * "pbxPort providerPort" up to "go"; for each it binds two sockets and
 * prints "legAPort legBPort", then "ready". It relays until stdin closes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 16
#define MAXEV 256
#define BUFSZ 2048

struct leg {
	int fd;                  /* this leg's socket */
	struct sockaddr_in peer; /* where this leg's remote listens */
	struct leg *other;
};

static int bind_lo(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	int rcv = 1 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		perror("bind");
		exit(1);
	}
	return fd;
}

static int port_of(int fd)
{
	struct sockaddr_in sa;
	socklen_t l = sizeof sa;
	getsockname(fd, (struct sockaddr *)&sa, &l);
	return ntohs(sa.sin_port);
}

static struct sockaddr_in lo_port(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	return sa;
}

int main(void)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		perror("epoll_create1");
		return 1;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: stdin */
	epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);

	char line[128];
	int pbx, prov;
	while (fgets(line, sizeof line, stdin) && strncmp(line, "go", 2) != 0) {
		if (sscanf(line, "%d %d", &pbx, &prov) != 2) {
			fprintf(stderr, "floor: bad line %s", line);
			return 1;
		}
		struct leg *a = calloc(2, sizeof *a), *b = a + 1;
		a->fd = bind_lo();
		b->fd = bind_lo();
		a->peer = lo_port(pbx);
		b->peer = lo_port(prov);
		a->other = b;
		b->other = a;
		ev.data.ptr = a;
		epoll_ctl(ep, EPOLL_CTL_ADD, a->fd, &ev);
		ev.data.ptr = b;
		epoll_ctl(ep, EPOLL_CTL_ADD, b->fd, &ev);
		printf("%d %d\n", port_of(a->fd), port_of(b->fd));
	}
	printf("ready\n");
	fflush(stdout);

	static char bufs[BATCH][BUFSZ];
	static struct iovec iov[BATCH];
	static struct mmsghdr in[BATCH], out[BATCH];
	struct epoll_event evs[MAXEV];
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = BUFSZ;
		in[i].msg_hdr.msg_iov = &iov[i];
		in[i].msg_hdr.msg_iovlen = 1;
	}
	for (;;) {
		int n = epoll_wait(ep, evs, MAXEV, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			return 1;
		}
		for (int e = 0; e < n; e++) {
			struct leg *l = evs[e].data.ptr;
			if (l == NULL) { /* stdin readable: closed, or a line we ignore */
				if (read(0, line, sizeof line) <= 0)
					return 0;
				continue;
			}
			for (int i = 0; i < BATCH; i++)
				iov[i].iov_len = BUFSZ;
			int got = recvmmsg(l->fd, in, BATCH, MSG_DONTWAIT, NULL);
			if (got <= 0)
				continue;
			/* In on leg l: out of the other leg's socket to its remote. */
			for (int i = 0; i < got; i++) {
				out[i].msg_hdr = in[i].msg_hdr;
				iov[i].iov_len = in[i].msg_len;
				out[i].msg_hdr.msg_name = &l->other->peer;
				out[i].msg_hdr.msg_namelen = sizeof l->other->peer;
			}
			for (int i = 0; i < got;) {
				int s = sendmmsg(l->other->fd, out + i, got - i, MSG_DONTWAIT);
				if (s <= 0) {
					if (s < 0 && errno == EINTR)
						continue;
					i++; /* dropped, as a relay would */
				} else {
					i += s;
				}
			}
		}
	}
}
