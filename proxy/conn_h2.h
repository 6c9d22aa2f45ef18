/*
 * conn_h2.h - downstream HTTP/2 connections (nghttp2 server sessions).
 */
#ifndef CUTOVER_CONN_H2_H
#define CUTOVER_CONN_H2_H

#include <stdbool.h>

struct worker;
struct bufferevent;

/* Serve HTTP/2 on bev (TLS with ALPN h2, or cleartext after the client
 * preface was seen). Takes ownership of bev; bytes already in its input
 * (the preface) are processed. The worker's connection count already
 * includes this connection. */
void h2conn_start(struct worker *w, struct bufferevent *bev, const char *client_ip, bool tls);

#endif
