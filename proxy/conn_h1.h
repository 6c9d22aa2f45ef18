/*
 * conn_h1.h - downstream HTTP/1.1 connections.
 */
#ifndef CUTOVER_CONN_H1_H
#define CUTOVER_CONN_H1_H

#include <event2/util.h>
#include <stdbool.h>
#include <sys/socket.h>

struct worker;

struct bufferevent;

/* Serve HTTP/1.1 on bev (a plain socket, or TLS after its handshake). Takes
 * ownership of bev. The worker's connection count already includes it. */
void h1conn_start(struct worker *w, struct bufferevent *bev, const char *client_ip, bool tls);

#endif
