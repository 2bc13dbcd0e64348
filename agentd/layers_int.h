/*
 * layers_int.h - what the image reader (layers.c) and the layer writer (layerwrite.c)
 * share: buffer sizes, the xattr record, SHA-256 digests and blob paths.
 */
#ifndef KUMO_LAYERS_INT_H
#define KUMO_LAYERS_INT_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define BLOCK		512
#define IO_CHUNK	(128 * 1024)
#define XATTRS_MAX	16
#define XATTR_VALUE_MAX 4096
/* Directory levels a committed layer may have (real images stay far below). */
#define LAYERS_DEPTH_MAX 256

/* Media types of what images are made of. */
#define MT_OCI_MANIFEST	  "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX	  "application/vnd.oci.image.index.v1+json"
#define MT_OCI_CONFIG	  "application/vnd.oci.image.config.v1+json"
#define MT_OCI_LAYER_GZIP "application/vnd.oci.image.layer.v1.tar+gzip"
#define MT_OCI_LAYER_TAR  "application/vnd.oci.image.layer.v1.tar"
#define MT_DOCKER_LIST	  "application/vnd.docker.distribution.manifest.list.v2+json"
#define MT_DOCKER_LAYER	  "application/vnd.docker.image.rootfs.diff.tar.gzip"
#define MT_DOCKER_TAR	  "application/vnd.docker.image.rootfs.diff.tar"

struct xattr {
	char name[128];
	char *value;
	size_t len;
};

EVP_MD_CTX *layers_hash_new(void);
/* Finish h into "sha256:<hex>" (out holds 72) and free it. */
void layers_hash_end(EVP_MD_CTX *h, char out[72]);
/* {shared}/oci/blobs/sha256/<hex> of digest. */
void layers_blob_path(const char *shared, const char *digest, char *out, size_t len);
/* The SHA-256 of a file as "sha256:<hex>" (out holds 72) and its size. */
int layers_file_hash(const char *path, char out[72], int64_t *size, struct kerr *err);
void layers_xattrs_free(struct xattr *x, size_t *n);
/* Which xattrs a layer may carry: file capabilities and the user namespace. */
bool layers_xattr_allowed(const char *name);

#endif
