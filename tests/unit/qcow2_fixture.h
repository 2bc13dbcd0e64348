/*
 * qcow2_fixture.h - for unit tests: qcow2 headers built in memory, as qemu-img writes
 * them, for the parser (test_qcow2.c) and the controller's upload check
 * (test_api_images.c). Include once, after <stdint.h> and <string.h>.
 */
#ifndef KUMO_TESTS_QCOW2_FIXTURE_H
#define KUMO_TESTS_QCOW2_FIXTURE_H

#define BUF 4096 /* the bytes of every header built here */

static inline void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static inline void put64(unsigned char *p, uint64_t v)
{
	put32(p, v >> 32);
	put32(p + 4, (uint32_t)v);
}

/* A version 3 header: 64 KiB clusters, 1 GiB, no extension (an end marker at 104). */
static inline void header_v3(unsigned char *b)
{
	memset(b, 0, BUF);
	memcpy(b, "QFI\xfb", 4);
	b[7] = 3;     /* version */
	b[23] = 16;   /* cluster_bits */
	b[28] = 0x40; /* size: 0x40000000 */
	b[103] = 104; /* header_length */
}

#endif
