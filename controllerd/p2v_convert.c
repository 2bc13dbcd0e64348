/*
 * p2v_convert.c - virt-v2v-in-place on the disks a P2V cutover wrote ("convert": true),
 * so the guest boots on virtio before its first boot: drivers into its initramfs, fstab
 * and the boot loader fixed.
 *
 * One run per session, through the child runner, off the loop: its "[  52.1] Step"
 * lines are its progress, the session's deadline bounds it, a cancel kills its whole
 * tree (the libguestfs appliance is a QEMU of its own, qemu-nbd serves each disk).
 *
 * A run outlives a controller killed under it: its processes are reparented and run
 * on to their end. So every process of a run carries KUMO_P2V_CONVERT=<session id> in
 * its environment (inherited by virt-v2v's qemu-nbd, supermin, the appliance and
 * libguestfs's recovery process), and the controller that starts next finds them by it
 * (p2v_convert_leftovers_remove) whoever their parent is now. Its scratch files
 * (TMPDIR: virt-v2v's v2v.* and qemu-nbd's directories) live in
 * <state_dir>/v2v/<session id>, removed with the run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "child.h"
#include "controllerd.h"
#include "log.h"
#include "tree.h"
#include "util.h"

#define MARKER_NAME "KUMO_P2V_CONVERT"

struct p2v_convert {
	struct child *child;
	char id[64];
	char *tmpdir;
	char line[160]; /* the output line being read */
	size_t line_len;
	p2v_convert_step_cb step;
	p2v_convert_done_cb done;
	void *data;
};

static char *tmpdir_path(const char *id)
{
	return xasprintf("%s/v2v/%s", ctl.cfg.state_dir, id);
}

/* Each "[  52.1] Inspecting the source" line of virt-v2v's stdout is a step. */
static void output_cb(const char *buf, size_t len, void *data)
{
	struct p2v_convert *c = data;

	for (size_t i = 0; i < len; i++) {
		const char *step;

		if (buf[i] != '\n' && buf[i] != '\r') {
			if (c->line_len < sizeof(c->line) - 1)
				c->line[c->line_len++] = buf[i];
			continue;
		}
		c->line[c->line_len] = '\0';
		c->line_len = 0;
		step = c->line[0] == '[' ? strchr(c->line, ']') : NULL;
		if (step == NULL || step[1] != ' ' || step[2] == '\0')
			continue;
		c->step(step + 2, c->data);
	}
}

/*
 * Why virt-v2v failed, in one paragraph: its "error:" message (which spans lines, the
 * reason last, e.g. "No root device found in this operating system image.") up to
 * its advice on reporting bugs, whitespace folded.
 */
static void why_get(const struct child_result *r, char *buf, size_t len)
{
	const char *from = strstr(r->err, "error: "), *to;
	size_t n = 0;

	if (from == NULL) {
		child_result_why(r, buf, len);
		return;
	}
	from += 7;
	to = strstr(from, "If reporting bugs");
	if (to == NULL)
		to = from + strlen(from);
	for (const char *p = from; p < to && n + 1 < len; p++) {
		bool space = *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r';

		if (space && (n == 0 || buf[n - 1] == ' '))
			continue;
		buf[n++] = space ? ' ' : *p;
	}
	while (n > 0 && buf[n - 1] == ' ')
		n--;
	buf[n] = '\0';
}

static void done_cb(const struct child_result *r, void *data)
{
	struct p2v_convert *c = data;
	enum p2v_convert_end end = P2V_CONVERT_OK;
	char why[400] = "";

	if (r->cancelled || r->abandoned)
		end = P2V_CONVERT_CANCELLED;
	else if (r->timed_out)
		end = P2V_CONVERT_TIMED_OUT;
	else if (!child_result_ok(r)) {
		/* It refused the guest (not an OS it recognises, no boot loader it knows)
		 * or failed: its own reason. */
		end = P2V_CONVERT_FAILED;
		why_get(r, why, sizeof(why));
	}
	/* What the runner killed may have left scratch files; nothing of the run stays. */
	if (tree_remove(c->tmpdir) < 0)
		log_warnx("virt-v2v run %s: cannot remove %s", c->id, c->tmpdir);
	c->done(end, why, c->data);
	free(c->tmpdir);
	free(c);
}

/* XML text of s: &, <, >, ' and " escaped. The caller frees it. */
static char *xml_escape(const char *s)
{
	size_t n = 0;
	char *out = xmalloc(strlen(s) * 6 + 1);

	for (; *s; s++) {
		const char *e = *s == '&'    ? "&amp;"
				: *s == '<'  ? "&lt;"
				: *s == '>'  ? "&gt;"
				: *s == '\'' ? "&apos;"
				: *s == '"'  ? "&quot;"
					     : NULL;

		if (e == NULL) {
			out[n++] = *s;
			continue;
		}
		memcpy(out + n, e, strlen(e));
		n += strlen(e);
	}
	out[n] = '\0';
	return out;
}

/*
 * The libvirt domain virt-v2v reads with -i libvirtxml: the disks in order, each
 * on the bus it had on the source (virt-v2v's conversion of the boot configuration
 * renames devices by it). The rest (memory, vCPUs, NICs) does not matter in place:
 * virt-v2v-in-place writes no output metadata; the VM's hardware is the session's.
 */
static int domain_xml_write(const char *path, const char *id, const struct p2v_convert_disk *disks,
			    int ndisks, struct kerr *err)
{
	static const struct {
		const char *bus, *prefix;
	} buses[] = {{"virtio", "vd"}, {"scsi", "sd"}, {"sata", "sd"}, {"ide", "hd"}};
	size_t cap = 4096 + (size_t)ndisks * 8192, n = 0;
	_cleanup_free_ char *xml = xmalloc(cap);

	n += (size_t)snprintf(xml + n, cap - n,
			      "<domain type='kvm'>\n  <name>p2v-%s</name>\n"
			      "  <memory unit='MiB'>1024</memory>\n  <vcpu>1</vcpu>\n"
			      "  <os><type>hvm</type></os>\n  <devices>\n",
			      id);
	for (int i = 0; i < ndisks; i++) {
		_cleanup_free_ char *file = xml_escape(disks[i].path);
		const char *bus = "sata", *prefix = "sd";

		for (size_t k = 0; k < ARRAY_SIZE(buses); k++)
			if (!strcmp(disks[i].bus, buses[k].bus)) {
				bus = buses[k].bus;
				prefix = buses[k].prefix;
			}
		if (strlen(file) > 4096)
			return err_set(err, 0, "disk path too long: %s", disks[i].path);
		n += (size_t)snprintf(xml + n, cap - n,
				      "    <disk type='file' device='disk'>\n"
				      "      <driver name='qemu' type='qcow2'/>\n"
				      "      <source file='%s'/>\n"
				      "      <target dev='%s%c' bus='%s'/>\n"
				      "    </disk>\n",
				      file, prefix, 'a' + i, bus);
	}
	n += (size_t)snprintf(xml + n, cap - n, "  </devices>\n</domain>\n");
	/* No fsync (this is the loop): the file is rebuilt by every run, never read after
	 * a reboot. */
	if (file_write_replace(path, xml, n, 0600) < 0)
		return err_set(err, errno, "cannot write %s", path);
	return 0;
}

struct p2v_convert *p2v_convert_start(const char *id, const struct p2v_convert_disk *disks,
				      int ndisks, int64_t deadline, p2v_convert_step_cb step,
				      p2v_convert_done_cb done, void *data, struct kerr *err)
{
	extern char **environ;
	struct p2v_convert *c;
	_cleanup_free_ char *marker = xasprintf(MARKER_NAME "=%s", id), *tmp = NULL;
	_cleanup_free_ char *xml = NULL;
	/* One disk: -i disk, the form a real Debian guest was shown converting with;
	 * more: -i libvirtxml, a domain holding them all (virt-v2v inspects them as one
	 * guest: / on one disk, /boot or /home on another). */
	char *argv[] = {
		"virt-v2v-in-place", "-i", "disk", "-if", "qcow2", "--root", "single", NULL, NULL};
	char *argv_xml[] = {
		"virt-v2v-in-place", "-i", "libvirtxml", "--root", "single", NULL, NULL};
	char *env[512];
	size_t n = 0;
	int64_t left = deadline - now_ms();
	struct child_opts opts = {
		.argv = ndisks > 1 ? argv_xml : argv,
		.env = env,
		.out_max = 4096,
		.err_max = 4096,
		.err_mode = CHILD_ERR_CAPTURE,
		.on_output = output_cb,
	};

	if (ndisks < 1 || ndisks > 26)
		return err_set(err, 0, "virt-v2v: %d disks (1 to 26)", ndisks), NULL;
	argv[7] = (char *)disks[0].path;
	tmp = tmpdir_path(id);
	/* Processes a dead controller left were killed at start-up (p2v_sessions_load,
	 * ova_import_resume); a scratch directory can only be stale. */
	tree_remove(tmp);
	if (mkdir_p(tmp, 0700) < 0)
		return err_set(err, errno, "cannot create %s", tmp), NULL;
	if (ndisks > 1) {
		xml = xasprintf("%s/domain.xml", tmp);
		if (domain_xml_write(xml, id, disks, ndisks, err) < 0) {
			tree_remove(tmp);
			return NULL;
		}
		argv_xml[5] = xml;
	}
	/* First, so it is inside what /proc/PID/environ shows of any of them. */
	env[n++] = marker;
	for (char **e = environ; *e && n < ARRAY_SIZE(env) - 4; e++)
		if (strncmp(*e, "LIBGUESTFS_BACKEND", 18) && strncmp(*e, "TMPDIR=", 7) &&
		    strncmp(*e, MARKER_NAME "=", strlen(MARKER_NAME) + 1))
			env[n++] = *e;
	/* direct: libguestfs runs QEMU itself (no libvirt daemon on our hosts). */
	env[n++] = "LIBGUESTFS_BACKEND=direct";
	if (ctl.cfg.v2v_tcg)
		env[n++] = "LIBGUESTFS_BACKEND_SETTINGS=force_tcg";
	{
		_cleanup_free_ char *tmpdir_env = xasprintf("TMPDIR=%s", tmp);

		env[n++] = tmpdir_env;
		env[n] = NULL;
		opts.timeout_ms = left < 1000		       ? 1000
				  : left > (int64_t)UINT32_MAX ? UINT32_MAX
							       : (unsigned)left;
		c = xcalloc(1, sizeof(*c));
		snprintf(c->id, sizeof(c->id), "%s", id);
		c->step = step;
		c->done = done;
		c->data = data;
		c->child = child_run(ctl.loop, &opts, done_cb, c, err);
	}
	if (c->child == NULL) {
		tree_remove(tmp);
		free(c);
		return NULL;
	}
	c->tmpdir = STEAL_POINTER(&tmp);
	return c;
}

/*
 * libguestfs run as root keeps its sockets in /tmp/libguestfsXXXXXX whatever TMPDIR
 * says, and removes it only when it shuts its appliance down: a killed run leaves it.
 * Its path is on the appliance QEMU's command line, read before the kill.
 */
struct sockdirs {
	int n;
	char path[8][32];
};

static void sockdir_note_cb(pid_t pid, void *data)
{
	struct sockdirs *dirs = data;
	_cleanup_free_ char *path = xasprintf("/proc/%d/cmdline", (int)pid), *cmd = NULL;
	static const char prefix[] = "/tmp/libguestfs";
	size_t len = 0, plen = sizeof(prefix) - 1;

	if (file_read_all(path, 1 << 16, &cmd, &len) < 0)
		return;
	for (size_t at = 0; at + plen + 7 <= len; at++) {
		char dir[32];
		bool ok = !memcmp(cmd + at, prefix, plen) && cmd[at + plen + 6] == '/';

		for (size_t k = 0; ok && k < 6; k++)
			ok = (cmd[at + plen + k] >= 'a' && cmd[at + plen + k] <= 'z') ||
			     (cmd[at + plen + k] >= 'A' && cmd[at + plen + k] <= 'Z') ||
			     (cmd[at + plen + k] >= '0' && cmd[at + plen + k] <= '9');
		if (!ok)
			continue;
		snprintf(dir, sizeof(dir), "%.*s", (int)(plen + 6), cmd + at);
		for (int i = 0; i < dirs->n; i++)
			if (!strcmp(dirs->path[i], dir))
				ok = false;
		if (ok && dirs->n < (int)ARRAY_SIZE(dirs->path))
			memcpy(dirs->path[dirs->n++], dir, sizeof(dir));
	}
}

/* Kill every process of run id now; its libguestfs socket directories go too. */
static int run_kill(const char *id)
{
	_cleanup_free_ char *marker = xasprintf(MARKER_NAME "=%s", id);
	struct sockdirs dirs = {0};
	int killed = child_marked_kill(marker, sockdir_note_cb, &dirs);

	for (int i = 0; i < dirs.n; i++)
		if (tree_remove(dirs.path[i]) < 0)
			log_warnx("virt-v2v run %s: cannot remove %s", id, dirs.path[i]);
	return killed;
}

void p2v_convert_cancel(struct p2v_convert *c)
{
	/* The whole marked tree (appliance included), its socket directory noted; the
	 * runner then hears its child was killed. */
	run_kill(c->id);
	child_cancel(c->child);
}

int p2v_convert_leftovers_remove(const char *id)
{
	_cleanup_free_ char *tmp = tmpdir_path(id);
	struct stat sb;
	int killed = run_kill(id);

	if (killed)
		log_info("virt-v2v run %s: killed %d processes a previous controller "
			 "left running",
			 id, killed);
	if (lstat(tmp, &sb) == 0 && tree_remove(tmp) < 0)
		log_warnx("virt-v2v run %s: cannot remove %s", id, tmp);
	return killed;
}
