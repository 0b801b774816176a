/*
 * xml_plain.h — a strict one-pass reader for plain XML (xml_plain.c): the
 * SyncML the service's PCs and the simulated PCs' server send, read into a
 * small tree of elements and text without libxml2. It reads only a subset
 * and says "not mine" for everything else, so its users hand those messages
 * to libxml2 and what is accepted and refused stays libxml2's word: the
 * simulated PC (sim/winpc.c) and the service's SyncML reader
 * (service/omadm_syncml.c). Internal: not installed, no libxml2.
 */
#ifndef ESIM_CORE_XML_PLAIN_H
#define ESIM_CORE_XML_PLAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/esim.h"

typedef enum {
    ESIM_XML_EL,
    ESIM_XML_TEXT,
    ESIM_XML_CDATA, /* never from the scanner: a converted libxml2 tree's */
} esim_xml_kind;

typedef struct esim_xml_node {
    esim_xml_kind kind;
    const char *name;  /* ESIM_XML_EL: the local name */
    const char *text;  /* ESIM_XML_TEXT, ESIM_XML_CDATA: decoded, NUL-terminated */
    const char *xmlns; /* ESIM_XML_EL: its xmlns attribute's value as libxml2 keeps
                          it (white space made spaces); NULL without one */
    struct esim_xml_node *children, *last, *next;
} esim_xml_node;

/* Nodes are taken from one array of |cap| (esim_xml_add); names and texts
 * live in |chars|. The tree owns both (esim_xml_free). */
typedef struct {
    esim_xml_node *nodes;
    size_t n, cap;
    char *chars;
    size_t n_chars;
    esim_xml_node *root;
} esim_xml_tree;

/* Deeper than this, a message is not plain. */
#define ESIM_XML_PLAIN_MAX_DEPTH 64
/* Longer than this, a message is not plain (libxml2's own limits on a text
 * node, 10 MB, stay its word). */
#define ESIM_XML_PLAIN_MAX_LEN (1u << 20)

/*
 * Reads |len| bytes at |p| into |t| (zeroed by the caller) when they are
 * plain XML: ASCII without CR or other control characters but tab and line
 * feed; an optional XML declaration (version 1.0, encoding UTF-8, standalone);
 * elements without a prefix, with at most one attribute, xmlns (not one of
 * the two reserved namespace names), whose value has no '<', '&' or control
 * character but tab and line feed; text with the five predefined entities;
 * white space outside the root. True with the tree built (libxml2 would
 * give the same elements, text and xmlns declarations); false, |t| to be
 * freed, for anything else, malformed or not: comments, PIs, a DOCTYPE,
 * CDATA, character references, prefixes, other attributes, depth over
 * ESIM_XML_PLAIN_MAX_DEPTH, more than ESIM_XML_PLAIN_MAX_LEN bytes, or
 * out of memory.
 */
bool esim_xml_plain_read(esim_xml_tree *t, const void *p, size_t len);
void esim_xml_free(esim_xml_tree *t); /* leaves it zeroed */

/* A new node of |k| under |parent| (NULL: none), from t->nodes; NULL when
 * all t->cap are taken. For a tree built from libxml2's. */
esim_xml_node *esim_xml_add(esim_xml_tree *t, esim_xml_node *parent, esim_xml_kind k);

/* |n| is an element named |name|. */
bool esim_xml_is(const esim_xml_node *n, const char *name);
/* The first child element of |n| (NULL ok) named |name|; NULL when none. */
esim_xml_node *esim_xml_child(const esim_xml_node *n, const char *name);

/* The text of |n| and everything under it, as libxml2's xmlNodeGetContent
 * gives it: "" when there is none; NULL when |n| is NULL or memory ran out.
 * The caller frees it. */
char *esim_xml_content(const esim_xml_node *n);

/* Appends |n| (an element with everything under it, or a text) written as
 * libxml2's xmlNodeDump writes a node of a plain tree, unformatted: text
 * with '&', '<' and '>' escaped, an element without children as <a/>, its
 * xmlns declaration quoted as libxml2 quotes it. ESIM_ENOMEM. What it
 * matches is libxml2 2.9's writer (Debian 12's 2.9.14): should a later
 * libxml2 write these differently, test_omadm_readers and the service
 * tests' two-reader check (which compare the stored copies byte for byte)
 * fail and say so. */
esim_err esim_xml_dump(esim_buf *b, const esim_xml_node *n);

#endif
