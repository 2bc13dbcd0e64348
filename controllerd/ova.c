/*
 * ova.c - V2V import: an OVA (a tar holding an OVF descriptor, its disks as VMDK and
 * an optional .mf manifest) uploaded as POST /api/v1/images?name=N&format=ova becomes
 * VM images and the instance create body of a VM with the OVF's hardware.
 *
 * Everything in an OVA is hostile input. While the upload's request waits, off the
 * loop: the tar is walked (regular files only, flat names without '/' or "..", every
 * size inside the archive), its members are copied out, the manifest's SHA-256 (or
 * SHA-1) of every member is checked and every member must be listed, and the OVF is
 * parsed by libxml2 without network, without a DTD (a DOCTYPE is refused, so no entity
 * is ever defined, let alone expanded) and mapped: vCPUs, memory, disks with the bus of
 * their controller (IDE, SCSI, SATA), NICs with model and MAC, firmware. Hardware Kumo
 * does not model is mapped with a note, never dropped silently. A bad OVA is answered
 * 400 with why and leaves nothing. A good one is answered 202 with an image-import
 * operation: each disk is checked by qemu-img (a VMDK naming other files is refused),
 * converted to qcow2 and recorded as image N (the first disk) or N-diskI; the
 * operation's result holds "instance", the create body to POST (with a name added).
 */
#include <errno.h>
#include <fcntl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controllerd.h"
#include "log.h"
#include "tree.h"
#include "util.h"
#include "valid.h"

#define OVA_MEMBERS_MAX 64
#define OVA_DISKS_MAX	8
#define OVA_NICS_MAX	8
#define OVF_MAX_BYTES	(4 << 20)
/* What an import's virt-v2v may take: a real Debian guest took 26 min under TCG at a
 * load of 16 here (docs/architecture.md); an import has no deadline of its own. */
#define OVA_CONVERT_MS (2 * 3600 * 1000)

struct ova_member {
	char name[101];
	int64_t size;
	char sha256[65], sha1[41];
	bool listed; /* named by the manifest */
};

struct ova_disk {
	char file[101]; /* the member holding it */
	char bus[8];
	int64_t capacity;
	int64_t virtual_size; /* as qemu-img found it */
	char image[NAME_MAX_LEN + 1];
};

struct ova_import {
	uv_work_t work;
	struct request *req;
	char name[NAME_MAX_LEN + 1];
	char op[LINK_OP_ID_MAX + 1];
	char *upload, *dir;
	int nmembers;
	struct ova_member members[OVA_MEMBERS_MAX];
	int ndisks, next_disk;
	struct ova_disk disks[OVA_DISKS_MAX];
	int vcpus;
	int64_t memory_mb;
	int nnics;
	char nic_model[OVA_NICS_MAX][8], nic_mac[OVA_NICS_MAX][18];
	struct json_object *notes;
	char error[512];
	int64_t virtual_size;
	char sha256[65];
	int64_t file_size;
	int hash_err;
	bool convert;	/* ?convert=1: virt-v2v rewrites the guest for virtio first */
	bool converted; /* ... and did: the qcow2 files are hashed and recorded now */
};

static void ova_free(struct ova_import *im)
{
	if (im->upload)
		unlink(im->upload);
	if (im->dir)
		tree_remove(im->dir);
	free(im->upload);
	free(im->dir);
	json_object_put(im->notes);
	free(im);
}

static void note(struct ova_import *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct ova_import *im, const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	json_object_array_add(im->notes, json_object_new_string(buf));
}

static int bad(struct ova_import *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct ova_import *im, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(im->error, sizeof(im->error), fmt, ap);
	va_end(ap);
	return -1;
}

/* A member or file reference name: flat, no "..", no hidden file, a plain alphabet. */
static bool member_name_ok(const char *s)
{
	if (s[0] == '\0' || s[0] == '.' || strlen(s) > 100)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return false;
	return strstr(s, "..") == NULL;
}

static struct ova_member *member_find(struct ova_import *im, const char *name)
{
	for (int i = 0; i < im->nmembers; i++)
		if (!strcmp(im->members[i].name, name))
			return &im->members[i];
	return NULL;
}

static int64_t octal(const char *p, size_t n)
{
	int64_t v = 0;

	for (size_t i = 0; i < n && p[i] && p[i] != ' '; i++) {
		if (p[i] < '0' || p[i] > '7')
			return -1;
		v = v * 8 + (p[i] - '0');
	}
	return v;
}

/* Copy len bytes at the tar's current offset into dir/name, hashing them as they go. */
static int member_extract(struct ova_import *im, int fd, struct ova_member *m)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", im->dir, m->name);
	_cleanup_close_ int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	EVP_MD_CTX *c256 = EVP_MD_CTX_new(), *c1 = EVP_MD_CTX_new();
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen;
	int64_t left = m->size;
	int ret = 0;

	if (out < 0)
		ret = bad(im, "cannot store %s: %s", m->name, strerror(errno));
	EVP_DigestInit_ex(c256, EVP_sha256(), NULL);
	EVP_DigestInit_ex(c1, EVP_sha1(), NULL);
	while (ret == 0 && left > 0) {
		ssize_t n =
			read(fd, buf,
			     (size_t)(left < (int64_t)sizeof(buf) ? left : (int64_t)sizeof(buf)));

		if (n <= 0) {
			ret = bad(im, "the OVA ends inside %s: its size in the tar lies", m->name);
			break;
		}
		EVP_DigestUpdate(c256, buf, (size_t)n);
		EVP_DigestUpdate(c1, buf, (size_t)n);
		if (write(out, buf, (size_t)n) != n)
			ret = bad(im, "cannot store %s: %s", m->name, strerror(errno));
		left -= n;
	}
	if (ret == 0) {
		EVP_DigestFinal_ex(c256, md, &mdlen);
		hex_encode(md, 32, m->sha256);
		EVP_DigestFinal_ex(c1, md, &mdlen);
		hex_encode(md, 20, m->sha1);
	}
	EVP_MD_CTX_free(c256);
	EVP_MD_CTX_free(c1);
	return ret;
}

/* Walk the ustar archive: regular files with flat names, each inside the archive. */
static int tar_walk(struct ova_import *im)
{
	_cleanup_close_ int fd = open(im->upload, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	char h[512];

	if (fd < 0 || fstat(fd, &sb) < 0)
		return bad(im, "cannot read the upload: %s", strerror(errno));
	for (off_t off = 0;;) {
		struct ova_member *m;
		char name[101];
		int64_t size;
		bool zero = true;

		if (pread(fd, h, sizeof(h), off) != (ssize_t)sizeof(h))
			return bad(im, "not an OVA: the tar archive ends without its end marker");
		for (size_t i = 0; i < sizeof(h) && zero; i++)
			zero = h[i] == 0;
		if (zero)
			break;
		if (memcmp(h + 257, "ustar", 5))
			return bad(im, "not an OVA: an OVA is a ustar archive");
		snprintf(name, sizeof(name), "%.100s", h);
		if (h[345] != '\0')
			return bad(im, "member %.100s has a directory prefix; OVA members are flat",
				   name);
		if (h[156] != '0' && h[156] != '\0')
			return bad(im, "member %.100s is not a regular file (type '%c')", name,
				   h[156]);
		if (!member_name_ok(name))
			return bad(im, "member name '%.100s' is refused: a flat name without '..'",
				   name);
		size = octal(h + 124, 12);
		if (size < 0 || off + 512 + size > sb.st_size)
			return bad(im, "member %s claims %lld bytes, past the end of the OVA", name,
				   (long long)size);
		if (member_find(im, name))
			return bad(im, "member %s appears twice", name);
		if (im->nmembers == OVA_MEMBERS_MAX)
			return bad(im, "an OVA has at most %d members", OVA_MEMBERS_MAX);
		m = &im->members[im->nmembers++];
		snprintf(m->name, sizeof(m->name), "%s", name);
		m->size = size;
		if (lseek(fd, off + 512, SEEK_SET) < 0 || member_extract(im, fd, m) < 0)
			return -1;
		off += 512 + (size + 511) / 512 * 512;
	}
	if (im->nmembers == 0)
		return bad(im, "the OVA is empty");
	return 0;
}

/* Check the .mf (if any): every member listed, every digest matching. */
static int manifest_check(struct ova_import *im)
{
	struct ova_member *mf = NULL;
	_cleanup_free_ char *text = NULL, *path = NULL;
	size_t len;

	for (int i = 0; i < im->nmembers; i++)
		if (strlen(im->members[i].name) > 3 &&
		    !strcmp(im->members[i].name + strlen(im->members[i].name) - 3, ".mf"))
			mf = &im->members[i];
	if (mf == NULL)
		return 0;
	mf->listed = true;
	path = xasprintf("%s/%s", im->dir, mf->name);
	if (file_read_all(path, 1 << 20, &text, &len) < 0)
		return bad(im, "the manifest %s is unreadable or over 1 MiB", mf->name);
	for (char *line = text, *next; line && *line; line = next) {
		char algo[8], file[101], hex[129];
		struct ova_member *m;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		line[strcspn(line, "\r")] = '\0';
		if (line[0] == '\0')
			continue;
		if (sscanf(line, "%7[A-Z0-9](%100[^)])= %128s", algo, file, hex) != 3)
			return bad(im, "the manifest line '%.80s' is not ALGO(file)= digest", line);
		m = member_find(im, file);
		if (m == NULL)
			return bad(im, "the manifest names %s, which the OVA does not hold", file);
		for (char *p = hex; *p; p++)
			*p = (char)(*p >= 'A' && *p <= 'F' ? *p + 32 : *p);
		if (!strcmp(algo, "SHA256") ? strcmp(hex, m->sha256)
		    : !strcmp(algo, "SHA1")
			    ? strcmp(hex, m->sha1)
			    : (bad(im, "the manifest's %s digests are not supported", algo), 1))
			return im->error[0] ? -1
					    : bad(im, "%s does not match its %s in the manifest",
						  file, algo);
		m->listed = true;
	}
	for (int i = 0; i < im->nmembers; i++)
		if (!im->members[i].listed)
			return bad(im, "%s is not in the manifest", im->members[i].name);
	return 0;
}

/* ---- the OVF ---- */

static bool is(const xmlNode *n, const char *local)
{
	return n && n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, local);
}

static xmlNode *child(const xmlNode *n, const char *local)
{
	for (xmlNode *c = n ? n->children : NULL; c; c = c->next)
		if (is(c, local))
			return c;
	return NULL;
}

/* The text of n's child local, into out ("" when absent). */
static const char *child_text(const xmlNode *n, const char *local, char *out, size_t len)
{
	xmlNode *c = child(n, local);
	xmlChar *t = c ? xmlNodeGetContent(c) : NULL;

	snprintf(out, len, "%s", t ? (const char *)t : "");
	xmlFree(t);
	return out;
}

/* An attribute by local name, whatever its namespace, into out ("" when absent). */
static const char *attr(xmlNode *n, const char *local, char *out, size_t len)
{
	xmlChar *v = xmlGetProp(n, (const xmlChar *)local);

	snprintf(out, len, "%s", v ? (const char *)v : "");
	xmlFree(v);
	return out;
}

static int64_t units_scale(const char *units)
{
	if (strstr(units, "2^30") || !strcasecmp(units, "GB") || strstr(units, "Giga"))
		return 1LL << 30;
	if (strstr(units, "2^20") || !strcasecmp(units, "MB") || strstr(units, "Mega"))
		return 1LL << 20;
	if (strstr(units, "2^10") || !strcasecmp(units, "KB") || strstr(units, "Kilo"))
		return 1LL << 10;
	return 1;
}

struct controller_map {
	char id[32];
	char bus[8];
};

static int hardware_map(struct ova_import *im, xmlNode *vhs, xmlNode *disk_section, xmlNode *refs)
{
	struct controller_map ctrls[16];
	int nctrl = 0;
	char t[256], v[256], u[128], id[64], parent[64], sub[64], host[256];

	/* Controllers first: a disk names its controller by InstanceID. */
	for (xmlNode *it = vhs->children; it; it = it->next) {
		int type;

		if (!is(it, "Item") && !is(it, "StorageItem"))
			continue;
		type = atoi(child_text(it, "ResourceType", t, sizeof(t)));
		if ((type == 5 || type == 6 || type == 20) && nctrl < 16) {
			child_text(it, "InstanceID", ctrls[nctrl].id, sizeof(ctrls[nctrl].id));
			child_text(it, "ResourceSubType", sub, sizeof(sub));
			snprintf(ctrls[nctrl].bus, sizeof(ctrls[nctrl].bus), "%s",
				 type == 5   ? "ide"
				 : type == 6 ? "scsi"
					     : "sata");
			if (type == 20 && sub[0] && strcasecmp(sub, "AHCI"))
				note(im, "storage controller '%s' mapped to sata", sub);
			nctrl++;
		}
	}
	for (xmlNode *it = vhs->children; it; it = it->next) {
		int type;

		if (!is(it, "Item") && !is(it, "StorageItem") && !is(it, "EthernetPortItem"))
			continue;
		type = atoi(child_text(it, "ResourceType", t, sizeof(t)));
		child_text(it, "VirtualQuantity", v, sizeof(v));
		child_text(it, "AllocationUnits", u, sizeof(u));
		switch (type) {
		case 3:
			im->vcpus = atoi(v);
			if (im->vcpus < 1 || im->vcpus > 256)
				return bad(im, "the OVF's CPU count '%.16s' is out of 1..256", v);
			break;
		case 4:
			im->memory_mb = strtoll(v, NULL, 10) * units_scale(u) >> 20;
			if (im->memory_mb < 16 || im->memory_mb > 1024 * 1024)
				return bad(im,
					   "the OVF's memory (%.16s %.32s) is out of 16 MiB..1 TiB",
					   v, u);
			break;
		case 5:
		case 6:
		case 20:
			break;
		case 10: {
			unsigned b[6];
			int n = im->nnics;

			if (n == OVA_NICS_MAX)
				return bad(im, "the OVF has more than %d NICs", OVA_NICS_MAX);
			child_text(it, "ResourceSubType", sub, sizeof(sub));
			if (!strncasecmp(sub, "E1000", 5)) {
				snprintf(im->nic_model[n], sizeof(im->nic_model[n]), "e1000");
			} else {
				snprintf(im->nic_model[n], sizeof(im->nic_model[n]), "virtio");
				if (strcasecmp(sub, "virtio") && strcasecmp(sub, "VirtioNet"))
					note(im, "NIC %d model '%.32s' mapped to virtio", n, sub);
			}
			child_text(it, "Address", host, sizeof(host));
			im->nic_mac[n][0] = '\0';
			if (host[0] &&
			    sscanf(host, "%2x%*1[:-]%2x%*1[:-]%2x%*1[:-]%2x%*1[:-]%2x%*1[:-]%2x",
				   &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) == 6 &&
			    !(b[0] & 1))
				snprintf(im->nic_mac[n], sizeof(im->nic_mac[n]),
					 "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3],
					 b[4], b[5]);
			else if (host[0])
				note(im,
				     "NIC %d address '%.32s' is not a unicast MAC; a new one is "
				     "made",
				     n, host);
			im->nnics++;
			break;
		}
		case 17: {
			struct ova_disk *d;
			const char *ref;
			xmlNode *dk, *f;
			char did[128], fref[128], href[128], cap[64], capu[64], fsize[64];

			if (im->ndisks == OVA_DISKS_MAX)
				return bad(im, "the OVF has more than %d disks", OVA_DISKS_MAX);
			d = &im->disks[im->ndisks];
			child_text(it, "HostResource", host, sizeof(host));
			ref = strrchr(host, '/');
			if (strncmp(host, "ovf:/disk/", 10) && strncmp(host, "/disk/", 6))
				return bad(im, "disk item '%.64s' does not name an OVF disk", host);
			for (dk = disk_section ? disk_section->children : NULL; dk; dk = dk->next)
				if (is(dk, "Disk") &&
				    !strcmp(attr(dk, "diskId", did, sizeof(did)), ref + 1))
					break;
			if (dk == NULL)
				return bad(im, "disk %.64s is not in the OVF's DiskSection",
					   ref + 1);
			attr(dk, "fileRef", fref, sizeof(fref));
			for (f = refs ? refs->children : NULL; f; f = f->next)
				if (is(f, "File") && !strcmp(attr(f, "id", did, sizeof(did)), fref))
					break;
			if (f == NULL)
				return bad(im, "disk %.64s names file %.64s, not in References",
					   ref + 1, fref);
			attr(f, "href", href, sizeof(href));
			if (!member_name_ok(href))
				return bad(im,
					   "file reference '%.64s' is refused: a flat name without "
					   "'..'",
					   href);
			if (member_find(im, href) == NULL)
				return bad(im, "disk file %s is missing from the OVA", href);
			attr(f, "size", fsize, sizeof(fsize));
			if (fsize[0] && strtoll(fsize, NULL, 10) != member_find(im, href)->size)
				return bad(im, "%s is %lld bytes, not the %s the OVF says", href,
					   (long long)member_find(im, href)->size, fsize);
			attr(dk, "capacity", cap, sizeof(cap));
			attr(dk, "capacityAllocationUnits", capu, sizeof(capu));
			d->capacity = strtoll(cap, NULL, 10) * units_scale(capu);
			snprintf(d->file, sizeof(d->file), "%s", href);
			child_text(it, "Parent", parent, sizeof(parent));
			snprintf(d->bus, sizeof(d->bus), "virtio");
			for (int c = 0; c < nctrl; c++)
				if (!strcmp(ctrls[c].id, parent))
					snprintf(d->bus, sizeof(d->bus), "%s", ctrls[c].bus);
			if (!parent[0])
				note(im, "disk %s has no controller; it gets virtio", href);
			im->ndisks++;
			break;
		}
		default:
			child_text(it, "ElementName", id, sizeof(id));
			note(im,
			     "device '%.48s' (OVF resource type %d) is not kept: Kumo VMs have no "
			     "such device",
			     id, type);
		}
	}
	return 0;
}

static int ovf_parse(struct ova_import *im)
{
	struct ova_member *ovf = NULL;
	_cleanup_free_ char *path = NULL;
	xmlDoc *doc;
	xmlNode *root, *vs, *vhs;
	int ret;

	for (int i = 0; i < im->nmembers && ovf == NULL; i++)
		if (strlen(im->members[i].name) > 4 &&
		    !strcmp(im->members[i].name + strlen(im->members[i].name) - 4, ".ovf"))
			ovf = &im->members[i];
	if (ovf == NULL)
		return bad(im, "the OVA holds no .ovf descriptor");
	if (ovf->size > OVF_MAX_BYTES)
		return bad(im, "the OVF descriptor is over %d bytes", OVF_MAX_BYTES);
	path = xasprintf("%s/%s", im->dir, ovf->name);
	/* No network, no entity substitution, no DTD loading; a DOCTYPE at all is refused
	 * below, so no entity can be declared. */
	doc = xmlReadFile(path, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (doc == NULL)
		return bad(im, "the OVF descriptor %s is not well-formed XML", ovf->name);
	if (doc->intSubset || doc->extSubset) {
		xmlFreeDoc(doc);
		return bad(im,
			   "the OVF descriptor has a DOCTYPE; OVF needs none and it is refused");
	}
	root = xmlDocGetRootElement(doc);
	if (!is(root, "Envelope")) {
		xmlFreeDoc(doc);
		return bad(im, "the OVF descriptor's root is not an Envelope");
	}
	vs = child(root, "VirtualSystem");
	if (vs == NULL && child(root, "VirtualSystemCollection"))
		vs = child(child(root, "VirtualSystemCollection"), "VirtualSystem");
	vhs = child(vs, "VirtualHardwareSection");
	if (vhs == NULL) {
		xmlFreeDoc(doc);
		return bad(im, "the OVF has no VirtualSystem with a VirtualHardwareSection");
	}
	im->vcpus = 1;
	im->memory_mb = 512;
	ret = hardware_map(im, vhs, child(root, "DiskSection"), child(root, "References"));
	for (xmlNode *c = vhs->children; ret == 0 && c; c = c->next) {
		char key[64], val[64];

		if (is(c, "Config") && !strcmp(attr(c, "key", key, sizeof(key)), "firmware") &&
		    !strcasecmp(attr(c, "value", val, sizeof(val)), "efi"))
			note(im, "firmware efi: Kumo VMs boot with SeaBIOS; the guest needs a BIOS "
				 "boot loader");
	}
	xmlFreeDoc(doc);
	if (ret == 0 && im->ndisks == 0)
		return bad(im, "the OVF has no disk");
	return ret;
}

static void check_work_cb(uv_work_t *w)
{
	struct ova_import *im = w->data;

	if (mkdir(im->dir, 0700) < 0) {
		bad(im, "cannot create %s: %s", im->dir, strerror(errno));
		return;
	}
	if (tar_walk(im) == 0 && manifest_check(im) == 0)
		ovf_parse(im);
}

static struct json_object *instance_body(struct ova_import *im);

/*
 * The check an upload gets, on the OVA at path, its members copied into dir (made here,
 * removed before returning): 0 and *out {"instance": create body with disk files as
 * "file", "notes": [...]} (a new reference), or -1 with why. Blocks: for a worker
 * thread or a test, never the loop.
 */
int ova_check(const char *path, const char *dir, struct json_object **out, char *why, size_t len)
{
	struct ova_import *im = xcalloc(1, sizeof(*im));
	int ret;

	xmlInitParser();
	im->dir = xstrdup(dir);
	im->upload = xstrdup(path);
	im->notes = json_object_new_array();
	im->work.data = im;
	check_work_cb(&im->work);
	ret = im->error[0] ? -1 : 0;
	if (ret < 0) {
		snprintf(why, len, "%s", im->error);
	} else {
		struct json_object *body = instance_body(im);
		struct json_object *d = json_object_object_get(body, "disks");

		for (int i = 0; i < im->ndisks; i++)
			json_object_object_add(json_object_array_get_idx(d, (size_t)i), "file",
					       json_object_new_string(im->disks[i].file));
		*out = json_object_new_object();
		json_object_object_add(*out, "instance", body);
		json_object_object_add(*out, "notes", json_object_get(im->notes));
	}
	free(im->upload); /* the caller's file */
	im->upload = NULL;
	ova_free(im);
	return ret;
}

/* ---- after the answer: qemu-img per disk, then record ---- */

static void import_fail(struct ova_import *im, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void import_fail(struct ova_import *im, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warnx("image %s: OVA import failed: %s", im->name, msg);
	/* Images of earlier disks go too: an OVA comes in whole or not at all. A converting
	 * import writes every qcow2 before it records any. */
	for (int i = 0; i < (im->convert ? im->ndisks : im->next_disk); i++) {
		_cleanup_free_ char *p =
			xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, im->disks[i].image);
		sqlite3_stmt *st = db_prepare(ctl.db, "DELETE FROM images WHERE name = ?");

		sqlite3_bind_text(st, 1, im->disks[i].image, -1, SQLITE_STATIC);
		sqlite3_step(st);
		sqlite3_finalize(st);
		unlink(p);
	}
	op_update(im->op, "failed", -1, "failed", NULL, msg);
	ova_free(im);
}

static void disk_next(struct ova_import *im);

static void hash_work_cb(uv_work_t *w)
{
	struct ova_import *im = w->data;
	_cleanup_free_ char *path = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool,
					      im->disks[im->next_disk].image);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen;
	struct stat sb;
	ssize_t n;

	im->hash_err = 0;
	if (fd < 0 || fstat(fd, &sb) < 0) {
		im->hash_err = errno;
		EVP_MD_CTX_free(ctx);
		return;
	}
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	if (n < 0 || fsync(fd) < 0)
		im->hash_err = errno;
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	hex_encode(md, 32, im->sha256);
	im->file_size = sb.st_size;
	EVP_MD_CTX_free(ctx);
}

static void hash_done_cb(uv_work_t *w, int status)
{
	struct ova_import *im = w->data;
	struct ova_disk *d = &im->disks[im->next_disk];
	_cleanup_free_ char *rel = xasprintf("images/%s.qcow2", d->image);
	struct kerr err;

	if (status < 0 || im->hash_err) {
		import_fail(im, "cannot hash image %s: %s", d->image,
			    strerror(im->hash_err ? im->hash_err : EIO));
		return;
	}
	if (images_record(d->image, rel, "vmdk", im->virtual_size, im->file_size, im->sha256,
			  &err) < 0) {
		import_fail(im, "%s", err.msg);
		return;
	}
	im->next_disk++;
	disk_next(im);
}

static void convert_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct ova_import *im = cls;

	if (status != 0) {
		import_fail(im, "converting %s to qcow2 failed: %.200s",
			    im->disks[im->next_disk].file, errout);
		return;
	}
	if (im->convert) {
		/* Hashed and recorded once virt-v2v has rewritten them all. */
		im->next_disk++;
		disk_next(im);
		return;
	}
	im->work.data = im;
	uv_queue_work(ctl.loop, &im->work, hash_work_cb, hash_done_cb);
}

static void info_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct ova_import *im = cls;
	struct ova_disk *d = &im->disks[im->next_disk];
	_cleanup_free_ char *src = xasprintf("%s/%s", im->dir, d->file);
	_cleanup_free_ char *dst = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, d->image);
	char why[256];
	struct kerr err;

	if (status != 0) {
		import_fail(im, "%s is not a VMDK: %.200s", d->file, errout);
		return;
	}
	if (image_info_check(out, src, "vmdk", &im->virtual_size, why, sizeof(why)) < 0) {
		import_fail(im, "%s is refused: %s", d->file, why);
		return;
	}
	if (d->capacity > 0 && d->capacity != im->virtual_size) {
		import_fail(im, "%s holds %lld bytes, not the capacity %lld the OVF says", d->file,
			    (long long)im->virtual_size, (long long)d->capacity);
		return;
	}
	d->virtual_size = im->virtual_size;
	if (image_room_check(im->virtual_size, why, sizeof(why)) < 0) {
		import_fail(im, "%s is refused: %s", d->file, why);
		return;
	}
	{
		char *argv[] = {"qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", src, dst, NULL};

		if (proc_run(argv, convert_cb, im, &err) < 0)
			import_fail(im, "%s", err.msg);
	}
}

/* The create body of a VM with the OVF's hardware: the operation's result. */
static struct json_object *instance_body(struct ova_import *im)
{
	struct json_object *b = json_object_new_object(), *mem = json_object_new_object();
	struct json_object *disks = json_object_new_array(), *nics = json_object_new_array();

	json_object_object_add(b, "type", json_object_new_string("vm"));
	json_object_object_add(b, "vcpus", json_object_new_int(im->vcpus));
	json_object_object_add(mem, "mb", json_object_new_int64(im->memory_mb));
	json_object_object_add(b, "memory", mem);
	for (int i = 0; i < im->ndisks; i++) {
		struct json_object *d = json_object_new_object();
		char name[16];

		snprintf(name, sizeof(name), "disk%d", i);
		json_object_object_add(d, "name", json_object_new_string(name));
		json_object_object_add(d, "image", json_object_new_string(im->disks[i].image));
		/* A converted guest boots from virtio-blk (virt-v2v installed its driver and
		 * fixed fstab and the boot loader). */
		json_object_object_add(
			d, "bus",
			json_object_new_string(im->converted ? "virtio" : im->disks[i].bus));
		json_object_array_add(disks, d);
	}
	json_object_object_add(b, "disks", disks);
	for (int i = 0; i < im->nnics; i++) {
		struct json_object *n = json_object_new_object();

		json_object_object_add(
			n, "model",
			json_object_new_string(im->converted ? "virtio" : im->nic_model[i]));
		if (im->nic_mac[i][0])
			json_object_object_add(n, "mac", json_object_new_string(im->nic_mac[i]));
		json_object_array_add(nics, n);
	}
	json_object_object_add(b, "nics", nics);
	return b;
}

/* ---- ?convert=1: virt-v2v-in-place on the qcow2 files (p2v_convert.c) ---- */

static void v2v_step_cb(const char *step, void *data)
{
	struct ova_import *im = data;
	char phase[200];

	snprintf(phase, sizeof(phase), "virt-v2v: %s", step);
	op_update(im->op, "running", 92, phase, NULL, NULL);
}

static void v2v_done_cb(enum p2v_convert_end end, const char *why, void *data)
{
	struct ova_import *im = data;

	if (end == P2V_CONVERT_TIMED_OUT) {
		import_fail(im, "timed out: virt-v2v did not finish in %d min",
			    OVA_CONVERT_MS / 60000);
		return;
	}
	if (end != P2V_CONVERT_OK) {
		import_fail(im, "virt-v2v could not convert the OVA's disks: %s",
			    why[0] ? why : "it was stopped");
		return;
	}
	log_info("image %s: converted by virt-v2v", im->name);
	json_object_array_add(im->notes,
			      json_object_new_string("converted by virt-v2v: the disks are on "
						     "virtio-blk and the NICs are virtio"));
	im->converted = true;
	im->next_disk = 0;
	disk_next(im);
}

/* The marked name of an import's virt-v2v run (p2v_convert.c): its operation's id. */
static void v2v_id(const char *op, char out[64])
{
	snprintf(out, 64, "ova-%.40s", op);
}

/* Every disk is a qcow2 file: virt-v2v rewrites them as one guest. */
static void v2v_start(struct ova_import *im)
{
	struct p2v_convert_disk disks[OVA_DISKS_MAX];
	char *paths[OVA_DISKS_MAX] = {0}, id[64];
	struct kerr err;

	for (int i = 0; i < im->ndisks; i++) {
		paths[i] = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, im->disks[i].image);
		disks[i].path = paths[i];
		disks[i].bus = im->disks[i].bus;
	}
	v2v_id(im->op, id);
	op_update(im->op, "running", 91, "virt-v2v: starting", NULL, NULL);
	log_info("image %s: converting %d disks with virt-v2v-in-place", im->name, im->ndisks);
	if (p2v_convert_start(id, disks, im->ndisks, now_ms() + OVA_CONVERT_MS, v2v_step_cb,
			      v2v_done_cb, im, &err) == NULL)
		import_fail(im, "cannot run virt-v2v-in-place: %s", err.msg);
	for (int i = 0; i < im->ndisks; i++)
		free(paths[i]);
}

/*
 * The job engine's resume of an image import the controller restarted under: it
 * cannot go on (its state lived in the dead controller). A converting
 * OVA import's virt-v2v runs on, reparented: killed here, and the qcow2 files it
 * wrote and never recorded removed. Returns -1: the operation ends failed.
 */
int ova_import_resume(struct host *h, const char *id, struct json_object *op)
{
	struct json_object *args =
		json_object_object_get(json_object_object_get(op, "result"), "args");
	const char *name = json_get_str(args, "name", "");
	char v2v[64];

	if (strcmp(json_get_str(args, "format", ""), "ova") ||
	    !json_get_bool(args, "convert", false) || !name_valid(name))
		return -1;
	v2v_id(id, v2v);
	p2v_convert_leftovers_remove(v2v);
	for (int i = 0; i < OVA_DISKS_MAX; i++) {
		char image[NAME_MAX_LEN + 1];
		_cleanup_free_ char *path = NULL;

		if (i == 0)
			snprintf(image, sizeof(image), "%s", name);
		else
			snprintf(image, sizeof(image), "%.50s-disk%d", name, i);
		if (image_find(image, NULL, 0, NULL, NULL) != 0)
			continue; /* recorded: an image like any other now */
		path = xasprintf("%s/images/%s.qcow2", ctl.cfg.shared_pool, image);
		if (unlink(path) == 0)
			log_info("image %s: removed %s, which an interrupted conversion wrote",
				 name, path);
	}
	return -1;
}

static void disk_next(struct ova_import *im)
{
	struct ova_disk *d;
	_cleanup_free_ char *src = NULL;
	char phase[96];
	struct kerr err;

	if (im->next_disk == im->ndisks && im->convert && !im->converted) {
		v2v_start(im);
		return;
	}
	if (im->converted && im->next_disk < im->ndisks) {
		/* Converted: each qcow2 is hashed and recorded as it is now. */
		snprintf(phase, sizeof(phase), "recording %s", im->disks[im->next_disk].image);
		op_update(im->op, "running", 95, phase, NULL, NULL);
		im->virtual_size = im->disks[im->next_disk].virtual_size;
		im->work.data = im;
		uv_queue_work(ctl.loop, &im->work, hash_work_cb, hash_done_cb);
		return;
	}
	if (im->next_disk == im->ndisks) {
		struct json_object *res = json_object_new_object();

		json_object_object_add(res, "image", json_object_new_string(im->disks[0].image));
		json_object_object_add(res, "instance", instance_body(im));
		json_object_object_add(res, "notes", json_object_get(im->notes));
		log_info("image %s: OVA imported (%d disks)", im->name, im->ndisks);
		op_update(im->op, "succeeded", 100, "done", res, NULL);
		ova_free(im);
		return;
	}
	d = &im->disks[im->next_disk];
	snprintf(phase, sizeof(phase), "converting %s", d->file);
	op_update(im->op, "running", 20 + 70 * im->next_disk / im->ndisks, phase, NULL, NULL);
	src = xasprintf("%s/%s", im->dir, d->file);
	{
		char *argv[] = {"qemu-img", "info", "--output=json", "-f", "vmdk", src, NULL};

		if (proc_run(argv, info_cb, im, &err) < 0)
			import_fail(im, "%s", err.msg);
	}
}

static void check_done_cb(uv_work_t *w, int status)
{
	struct ova_import *im = w->data;

	if (status < 0 && !im->error[0])
		bad(im, "the check was cancelled");
	for (int i = 0; !im->error[0] && i < im->ndisks; i++) {
		if (i == 0)
			snprintf(im->disks[i].image, sizeof(im->disks[i].image), "%s", im->name);
		else
			snprintf(im->disks[i].image, sizeof(im->disks[i].image), "%.50s-disk%d",
				 im->name, i);
		if (image_find(im->disks[i].image, NULL, 0, NULL, NULL) != 0)
			bad(im, "an image named %s exists already", im->disks[i].image);
	}
	http_resume(im->req);
}

static struct ova_import *pending; /* imports whose check runs, by request */

static enum MHD_Result check_reply(struct request *req)
{
	struct ova_import *im = pending;
	struct json_object *op, *res, *args;
	struct kerr err;

	/* One check is in flight at a time (ova_import_start); it is this request's. */
	if (im == NULL || im->req != req)
		return http_reply_error(req, 500, NULL, "the OVA check lost its request");
	pending = NULL;
	if (im->error[0]) {
		enum MHD_Result ret = http_reply_error(req, 400, NULL, "bad OVA: %s", im->error);

		log_info("image %s: OVA refused: %s", im->name, im->error);
		ova_free(im);
		return ret;
	}
	args = json_object_new_object();
	json_object_object_add(args, "name", json_object_new_string(im->name));
	json_object_object_add(args, "format", json_object_new_string("ova"));
	if (im->convert)
		json_object_object_add(args, "convert", json_object_new_boolean(true));
	res = json_object_new_object();
	json_object_object_add(res, "args", args);
	{
		_cleanup_free_ char *target = xasprintf("images/%s", im->name);

		op = op_create("image-import", target, NULL, res, &err);
	}
	if (op == NULL) {
		ova_free(im);
		return http_reply_kerr(req, &err);
	}
	snprintf(im->op, sizeof(im->op), "%s", json_get_str(op, "id", ""));
	im->req = NULL;
	disk_next(im);
	return http_reply_json(req, 202, op);
}

/*
 * The upload of an OVA named name is whole (req->upload_path): check it while the
 * request waits, answer 400 with why or 202 with the import's operation (convert:
 * virt-v2v rewrites the guest before its disks are recorded). Takes the upload file.
 */
enum MHD_Result ova_import_start(struct request *req, const char *name, bool convert)
{
	struct ova_import *im;

	if (pending)
		return http_reply_error(req, 503, NULL, "another OVA is being checked; retry");
	xmlInitParser(); /* once, on this thread, before a worker parses */
	im = xcalloc(1, sizeof(*im));
	im->req = req;
	im->convert = convert;
	snprintf(im->name, sizeof(im->name), "%s", name);
	im->upload = STEAL_POINTER(&req->upload_path);
	im->dir = xasprintf("%s.ova", im->upload);
	im->notes = json_object_new_array();
	im->work.data = im;
	pending = im;
	http_suspend(req, check_reply);
	uv_queue_work(ctl.loop, &im->work, check_work_cb, check_done_cb);
	return MHD_YES;
}

/* ---- V2V export: GET /api/v1/instances/{name}/export?format=ova|qcow2|raw ---- */

struct ova_export {
	uv_work_t work;
	struct request *req;
	char name[NAME_MAX_LEN + 1];
	char format[8];
	char *dir; /* scratch on the shared pool, removed once the answer holds the fd */
	struct json_object *inst;
	int ndisks, next;
	char disk_src[OVA_DISKS_MAX][512];
	char disk_name[OVA_DISKS_MAX][NAME_MAX_LEN + 1];
	char *out; /* the file answered */
	int fd;
	char error[512];
	unsigned status;
};

static struct ova_export *exporting; /* one export at a time */

static void export_free(struct ova_export *ex)
{
	if (ex->fd >= 0)
		close(ex->fd);
	if (ex->dir)
		tree_remove(ex->dir);
	free(ex->dir);
	free(ex->out);
	json_object_put(ex->inst);
	free(ex);
}

static void export_fail(struct ova_export *ex, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void export_fail(struct ova_export *ex, unsigned status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ex->error, sizeof(ex->error), fmt, ap);
	va_end(ap);
	ex->status = status;
	http_resume(ex->req);
}

/* Write one ustar member header for name of size bytes. */
static int tar_header(int fd, const char *name, int64_t size)
{
	char h[512] = {0};
	unsigned sum = 0;

	snprintf(h, 100, "%s", name);
	snprintf(h + 100, 8, "%07o", 0644);
	snprintf(h + 108, 8, "%07o", 0);
	snprintf(h + 116, 8, "%07o", 0);
	snprintf(h + 124, 12, "%011llo", (unsigned long long)size);
	snprintf(h + 136, 12, "%011llo", (unsigned long long)(now_ms() / 1000));
	h[156] = '0';
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += (unsigned char)h[i];
	snprintf(h + 148, 8, "%06o", sum);
	h[155] = ' ';
	return write(fd, h, 512) == 512 ? 0 : -1;
}

/* Append the file at path to the tar as name, hashing it; hex gets its SHA-256. */
static int tar_add(int out, const char *dir, const char *name, char hex[65])
{
	_cleanup_free_ char *path = xasprintf("%s/%s", dir, name);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char buf[1 << 16], md[32];
	unsigned int mdlen;
	struct stat sb;
	static const char pad[512];
	ssize_t n;
	int ret = 0;

	if (fd < 0 || fstat(fd, &sb) < 0 || tar_header(out, name, sb.st_size) < 0) {
		EVP_MD_CTX_free(ctx);
		return -1;
	}
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		if (write(out, buf, (size_t)n) != n)
			ret = -1;
	}
	if (n < 0 || (sb.st_size % 512 &&
		      write(out, pad, (size_t)(512 - sb.st_size % 512)) != 512 - sb.st_size % 512))
		ret = -1;
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	hex_encode(md, 32, hex);
	EVP_MD_CTX_free(ctx);
	return ret;
}

/* The OVF 1.0 descriptor of the instance (VirtualBox and VMware read this shape). */
static char *ovf_text(struct ova_export *ex)
{
	struct json_object *inst = ex->inst, *disks = json_object_object_get(inst, "disks");
	struct json_object *nics = json_object_object_get(inst, "nics");
	size_t cap = 1 << 16, len = 0;
	char *t = xmalloc(cap);
	int id = 10;

#define OUT(...) (len += (size_t)snprintf(t + len, len < cap ? cap - len : 0, __VA_ARGS__))
	OUT("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	    "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" "
	    "xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" "
	    "xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
	    "CIM_ResourceAllocationSettingData\" "
	    "xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
	    "CIM_VirtualSystemSettingData\">\n  <References>\n");
	for (int i = 0; i < ex->ndisks; i++) {
		struct stat sb;
		_cleanup_free_ char *p = xasprintf("%s/%s-disk%d.vmdk", ex->dir, ex->name, i);

		stat(p, &sb);
		OUT("    <File ovf:id=\"file%d\" ovf:href=\"%s-disk%d.vmdk\" ovf:size=\"%lld\"/>\n",
		    i, ex->name, i, (long long)sb.st_size);
	}
	OUT("  </References>\n  <DiskSection>\n    <Info>Virtual disks</Info>\n");
	for (int i = 0; i < ex->ndisks; i++)
		OUT("    <Disk ovf:diskId=\"vmdisk%d\" ovf:fileRef=\"file%d\" "
		    "ovf:capacity=\"%lld\" "
		    "ovf:capacityAllocationUnits=\"byte\" ovf:format=\"http://www.vmware.com/"
		    "interfaces/specifications/vmdk.html#streamOptimized\"/>\n",
		    i, i,
		    (long long)json_get_int(json_object_array_get_idx(disks, (size_t)i),
					    "virtual_size", 0));
	OUT("  </DiskSection>\n  <NetworkSection>\n    <Info>Networks</Info>\n"
	    "    <Network ovf:name=\"lan\"><Description>lan</Description></Network>\n"
	    "  </NetworkSection>\n  <VirtualSystem ovf:id=\"%s\">\n    <Info>%s, exported by "
	    "Kumo</Info>\n    <VirtualHardwareSection>\n      <Info>Hardware</Info>\n"
	    "      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>"
	    "<vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>%s"
	    "</vssd:VirtualSystemIdentifier><vssd:VirtualSystemType>vmx-07"
	    "</vssd:VirtualSystemType></System>\n",
	    ex->name, ex->name, ex->name);
	OUT("      <Item><rasd:ElementName>%lld virtual CPUs</rasd:ElementName>"
	    "<rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>"
	    "<rasd:VirtualQuantity>%lld</rasd:VirtualQuantity></Item>\n",
	    (long long)json_get_int(inst, "vcpus", 1), (long long)json_get_int(inst, "vcpus", 1));
	OUT("      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
	    "<rasd:ElementName>memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID>"
	    "<rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>%lld"
	    "</rasd:VirtualQuantity></Item>\n",
	    (long long)json_get_int(
		    json_object_object_get(inst, "memory"), "mb",
		    json_get_int(json_object_object_get(inst, "memory"), "max_mb", 512)));
	/* One controller per bus the disks use: IDE 5, SCSI 6, SATA 20 (AHCI). */
	OUT("      <Item><rasd:ElementName>ide0</rasd:ElementName><rasd:InstanceID>3"
	    "</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>"
	    "<rasd:ResourceType>5</rasd:ResourceType></Item>\n"
	    "      <Item><rasd:ElementName>scsi0</rasd:ElementName><rasd:InstanceID>4"
	    "</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>"
	    "<rasd:ResourceType>6</rasd:ResourceType></Item>\n"
	    "      <Item><rasd:ElementName>sata0</rasd:ElementName><rasd:InstanceID>5"
	    "</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType>"
	    "<rasd:ResourceType>20</rasd:ResourceType></Item>\n");
	for (int i = 0; i < ex->ndisks; i++) {
		const char *bus =
			json_get_str(json_object_array_get_idx(disks, (size_t)i), "bus", "virtio");

		/* virtio has no OVF controller; SCSI is what the other side can read. */
		OUT("      <Item><rasd:AddressOnParent>%d</rasd:AddressOnParent><rasd:ElementName>"
		    "%s</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk%d"
		    "</rasd:HostResource><rasd:InstanceID>%d</rasd:InstanceID><rasd:Parent>%d"
		    "</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>\n",
		    i, ex->disk_name[i], i, id++,
		    !strcmp(bus, "ide")	   ? 3
		    : !strcmp(bus, "sata") ? 5
					   : 4);
	}
	for (size_t i = 0; nics && i < json_array_len(nics); i++) {
		struct json_object *n = json_object_array_get_idx(nics, i);

		OUT("      <Item><rasd:Address>%s</rasd:Address><rasd:AutomaticAllocation>true"
		    "</rasd:AutomaticAllocation><rasd:Connection>lan</rasd:Connection>"
		    "<rasd:ElementName>ethernet%zu</rasd:ElementName><rasd:InstanceID>%d"
		    "</rasd:InstanceID><rasd:ResourceSubType>%s</rasd:ResourceSubType>"
		    "<rasd:ResourceType>10</rasd:ResourceType></Item>\n",
		    json_get_str(n, "mac", ""), i, id++,
		    !strcmp(json_get_str(n, "model", "virtio"), "e1000") ? "E1000" : "VirtIO");
	}
	OUT("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
#undef OUT
	if (len >= cap) {
		free(t);
		return NULL;
	}
	return t;
}

/* Off the loop: descriptor, manifest, tar. */
static void export_pack_cb(uv_work_t *w)
{
	struct ova_export *ex = w->data;
	_cleanup_free_ char *ovf = ovf_text(ex), *ovf_name = xasprintf("%s.ovf", ex->name);
	_cleanup_free_ char *ovf_path = xasprintf("%s/%s", ex->dir, ovf_name);
	_cleanup_free_ char *mf_name = xasprintf("%s.mf", ex->name);
	_cleanup_free_ char *mf = NULL;
	_cleanup_close_ int out = -1;
	char hex[65];

	ex->out = xasprintf("%s/%s.ova", ex->dir, ex->name);
	if (ovf == NULL || file_write_atomic(ovf_path, ovf, strlen(ovf), 0600) < 0) {
		snprintf(ex->error, sizeof(ex->error), "cannot write the OVF descriptor");
		return;
	}
	out = open(ex->out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0 || tar_add(out, ex->dir, ovf_name, hex) < 0) {
		snprintf(ex->error, sizeof(ex->error), "cannot write the OVA: %s", strerror(errno));
		return;
	}
	mf = xasprintf("SHA256(%s)= %s\n", ovf_name, hex);
	for (int i = 0; i < ex->ndisks; i++) {
		_cleanup_free_ char *vm = xasprintf("%s-disk%d.vmdk", ex->name, i);
		char *more;

		if (tar_add(out, ex->dir, vm, hex) < 0) {
			snprintf(ex->error, sizeof(ex->error), "cannot write the OVA: %s",
				 strerror(errno));
			return;
		}
		more = xasprintf("%sSHA256(%s)= %s\n", mf, vm, hex);
		free(mf);
		mf = more;
	}
	{
		_cleanup_free_ char *mf_path = xasprintf("%s/%s", ex->dir, mf_name);
		static const char end[1024];

		if (file_write_atomic(mf_path, mf, strlen(mf), 0600) < 0 ||
		    tar_add(out, ex->dir, mf_name, hex) < 0 || write(out, end, 1024) != 1024 ||
		    fsync(out) < 0)
			snprintf(ex->error, sizeof(ex->error), "cannot write the OVA: %s",
				 strerror(errno));
	}
}

static void export_pack_done_cb(uv_work_t *w, int status)
{
	struct ova_export *ex = w->data;

	if (status < 0 && !ex->error[0])
		snprintf(ex->error, sizeof(ex->error), "the export was cancelled");
	ex->status = ex->error[0] ? 500 : 200;
	http_resume(ex->req);
}

static void export_next(struct ova_export *ex);

static void export_convert_cb(int64_t status, const char *out, const char *errout, void *cls)
{
	struct ova_export *ex = cls;

	if (status != 0) {
		export_fail(ex, 500, "converting disk %s failed: %.200s", ex->disk_name[ex->next],
			    errout);
		return;
	}
	ex->next++;
	export_next(ex);
}

/* Convert the next disk (qemu-img, a child), then pack or answer. */
static void export_next(struct ova_export *ex)
{
	_cleanup_free_ char *dst = NULL;
	struct kerr err;
	bool ova = !strcmp(ex->format, "ova");

	if (ex->next == ex->ndisks) {
		if (!ova) {
			ex->out = xasprintf("%s/%s-disk0.%s", ex->dir, ex->name, ex->format);
			ex->status = 200;
			http_resume(ex->req);
			return;
		}
		ex->work.data = ex;
		uv_queue_work(ctl.loop, &ex->work, export_pack_cb, export_pack_done_cb);
		return;
	}
	dst = xasprintf("%s/%s-disk%d.%s", ex->dir, ex->name, ex->next, ova ? "vmdk" : ex->format);
	{
		char *vmdk[] = {"qemu-img",
				"convert",
				"-O",
				"vmdk",
				"-o",
				"subformat=streamOptimized",
				ex->disk_src[ex->next],
				dst,
				NULL};
		char *plain[] = {"qemu-img", "convert", "-O", ex->format, ex->disk_src[ex->next],
				 dst,	     NULL};

		if (proc_run(ova ? vmdk : plain, export_convert_cb, ex, &err) < 0)
			export_fail(ex, 500, "%s", err.msg);
	}
}

static enum MHD_Result export_reply(struct request *req)
{
	struct ova_export *ex = exporting;
	struct MHD_Response *resp;
	struct stat sb;
	char disp[128];

	exporting = NULL;
	if (ex == NULL || ex->req != req)
		return http_reply_error(req, 500, NULL, "the export lost its request");
	if (ex->error[0]) {
		enum MHD_Result ret = http_reply_error(req, ex->status, NULL, "%s", ex->error);

		export_free(ex);
		return ret;
	}
	ex->fd = open(ex->out, O_RDONLY | O_CLOEXEC);
	if (ex->fd < 0 || fstat(ex->fd, &sb) < 0) {
		enum MHD_Result ret = http_reply_error(req, 500, NULL, "cannot open the export");

		export_free(ex);
		return ret;
	}
	/* The answer owns the fd; the scratch files go now (the open file stays). */
	resp = MHD_create_response_from_fd((uint64_t)sb.st_size, ex->fd);
	ex->fd = -1;
	MHD_add_response_header(resp, "Content-Type",
				!strcmp(ex->format, "ova") ? "application/x-tar"
							   : "application/octet-stream");
	snprintf(disp, sizeof(disp), "attachment; filename=\"%s.%s\"", ex->name, ex->format);
	MHD_add_response_header(resp, "Content-Disposition", disp);
	export_free(ex);
	return http_reply_response(req, 200, resp);
}

/*
 * GET /api/v1/instances/{name}/export?format=ova|qcow2|raw: a stopped VM's disks on the
 * shared pool, as an OVA (OVF 1.0, stream-optimized VMDKs, a SHA-256 manifest) or its
 * first disk as qcow2 or raw. Built in scratch space on the shared pool, then streamed.
 */
enum MHD_Result api_instance_export(struct request *req)
{
	const char *format = http_query(req, "format");
	struct json_object *inst, *disks;
	struct ova_export *ex;

	if (format == NULL)
		format = "ova";
	if (strcmp(format, "ova") && strcmp(format, "qcow2") && strcmp(format, "raw"))
		return http_reply_error(req, 400, "format", "format must be ova, qcow2 or raw");
	inst = instance_get_json(req->params[0], false);
	if (inst == NULL)
		return http_reply_error(req, 404, NULL, "no instance named %s", req->params[0]);
	if (strcmp(json_get_str(inst, "type", ""), "vm") ||
	    strcmp(json_get_str(inst, "state", ""), "stopped")) {
		json_object_put(inst);
		return http_reply_error(req, 409, NULL, "only a stopped VM can be exported");
	}
	if (exporting) {
		json_object_put(inst);
		return http_reply_error(req, 503, NULL, "another export is being built; retry");
	}
	disks = json_object_object_get(inst, "disks");
	ex = xcalloc(1, sizeof(*ex));
	ex->fd = -1;
	ex->req = req;
	ex->inst = inst;
	snprintf(ex->name, sizeof(ex->name), "%s", req->params[0]);
	snprintf(ex->format, sizeof(ex->format), "%s", format);
	for (size_t i = 0; disks && i < json_array_len(disks) && i < OVA_DISKS_MAX; i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);

		if (strcmp(json_get_str(d, "pool", "shared"), "shared")) {
			export_free(ex);
			return http_reply_error(
				req, 409, NULL,
				"disk %s is on a host's local pool; only shared-pool "
				"disks can be exported",
				json_get_str(d, "name", ""));
		}
		snprintf(ex->disk_name[i], sizeof(ex->disk_name[i]), "%s",
			 json_get_str(d, "name", ""));
		snprintf(ex->disk_src[i], sizeof(ex->disk_src[i]), "%s/disks/%s/%s.qcow2",
			 ctl.cfg.shared_pool, ex->name, ex->disk_name[i]);
		ex->ndisks++;
	}
	if (ex->ndisks == 0) {
		export_free(ex);
		return http_reply_error(req, 409, NULL, "the VM has no disk to export");
	}
	if (strcmp(format, "ova"))
		ex->ndisks = 1; /* a single image: the first (boot) disk */
	{
		unsigned char rnd[8];
		char hex[17];

		random_bytes(rnd, sizeof(rnd));
		hex_encode(rnd, sizeof(rnd), hex);
		ex->dir = xasprintf("%s/images/.export-%s", ctl.cfg.shared_pool, hex);
	}
	if (mkdir(ex->dir, 0700) < 0) {
		free(ex->dir);
		ex->dir = NULL;
		export_free(ex);
		return http_reply_error(req, 500, NULL, "cannot make scratch space: %s",
					strerror(errno));
	}
	exporting = ex;
	http_suspend(req, export_reply);
	export_next(ex);
	return MHD_YES;
}
