/*
 * conn_h1.h - downstream HTTP/1.1 connections.
 */
#ifndef CUTOVER_CONN_H1_H
#define CUTOVER_CONN_H1_H

#include <event2/util.h>
#include <stdbool.h>
#include <sys/socket.h>

struct worker;

/* Take ownership of an accepted socket and serve HTTP/1.1 on it. */
void h1conn_accept(struct worker *w, evutil_socket_t fd, const struct sockaddr *sa, bool tls);

#endif
