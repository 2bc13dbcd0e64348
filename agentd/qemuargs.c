/*
 * qemuargs.c - the qemu-system-x86_64 command line for a VM, from its spec.
 *
 *   -machine q35, accel tcg (-cpu max) or kvm (-cpu host, +vmx/+svm when nested)
 *   -nodefaults -no-user-config -display none, -sandbox with every option denied
 *   a VGA whose VNC server is a unix socket (vnc.sock) for the dashboard's console
 *   QMP for the agent (qmp.sock, bound by the agent and handed over as fd 3) and a
 *   second QMP monitor (monitor.sock), serial console to console.log, -pidfile
 *   qemu.pid, a virtio balloon always, a virtio-serial port org.qemu.guest_agent.0
 *   on qga.sock for qemu-guest-agent
 *   disks as -blockdev JSON (qcow2 over a file) plus a device per bus; the
 *   cloud-init seed as a read-only raw virtio disk; NICs on isolated user networking
 *   bootindex from the spec's boot order
 *
 * Nothing here touches the system: the result depends only on the vm and its spec,
 * which instance.c has checked (names [a-z0-9-], MACs, paths of a plain shape).
 */
#include "agentd.h"

#include <string.h>

#include "json.h"
#include "util.h"

/* QEMU's own ',' escape for option values: a path with a comma doubles it. */
static char *opt_escape(const char *s)
{
	size_t len = strlen(s), n = 0;
	char *out = xmalloc(2 * len + 1);

	for (size_t i = 0; i < len; i++) {
		out[n++] = s[i];
		if (s[i] == ',')
			out[n++] = ',';
	}
	out[n] = '\0';
	return out;
}

/* Boot indexes from the spec's boot order: each disk, then each NIC, as listed. */
static void boot_order(struct json_object *spec, int *disk_boot, size_t ndisks, int *nic_boot,
		       size_t nnics)
{
	struct json_object *boot;
	int next = 1;

	if (!json_object_object_get_ex(spec, "boot", &boot)) {
		if (ndisks)
			disk_boot[0] = 1;
		return;
	}
	for (size_t i = 0; i < json_array_len(boot); i++) {
		const char *what = json_object_get_string(json_object_array_get_idx(boot, i));

		if (strcmp(what, "disk") == 0)
			for (size_t d = 0; d < ndisks; d++)
				disk_boot[d] = next++;
		else if (strcmp(what, "network") == 0)
			for (size_t n = 0; n < nnics; n++)
				nic_boot[n] = next++;
	}
}

static void blockdev_add(struct argv *av, const char *driver, const char *node, const char *path,
			 bool read_only)
{
	struct json_object *bd = json_object_new_object(), *file = json_object_new_object();

	/* JSON, not key=value: a file name needs no escaping there. */
	json_object_object_add(file, "driver", json_object_new_string("file"));
	json_object_object_add(file, "filename", json_object_new_string(path));
	json_object_object_add(bd, "driver", json_object_new_string(driver));
	json_object_object_add(bd, "node-name", json_object_new_string(node));
	if (read_only) {
		json_object_object_add(file, "read-only", json_object_new_boolean(true));
		json_object_object_add(bd, "read-only", json_object_new_boolean(true));
	} else {
		json_object_object_add(bd, "discard", json_object_new_string("unmap"));
		json_object_object_add(file, "discard", json_object_new_string("unmap"));
	}
	json_object_object_add(bd, "file", file);
	argv_add(av, "-blockdev");
	argv_add(av, "%s", json_text(bd));
	json_object_put(bd);
}

static void bootindex(char *out, size_t len, int index)
{
	if (index)
		snprintf(out, len, ",bootindex=%d", index);
	else
		out[0] = '\0';
}

static int disks_add(const struct vm *vm, struct argv *av, const int *disk_boot, struct kerr *err)
{
	struct json_object *arr;
	bool scsi = false;
	int ahci_port = 0;

	json_object_object_get_ex(vm->inst.spec, "disks", &arr);
	for (size_t i = 0; i < vm->ndisks; i++) {
		const char *bus = json_get_str(json_object_array_get_idx(arr, i), "bus", "virtio");
		char node[16], boot[24];

		snprintf(node, sizeof(node), "d%zu", i);
		bootindex(boot, sizeof(boot), disk_boot[i]);
		blockdev_add(av, "qcow2", node, vm->disks[i].abs, false);
		if (strcmp(bus, "scsi") == 0 && !scsi) {
			/* One virtio-scsi HBA carries every scsi disk. */
			argv_add(av, "-device");
			argv_add(av, "virtio-scsi-pci,id=scsi0");
			scsi = true;
		}
		argv_add(av, "-device");
		if (strcmp(bus, "virtio") == 0) {
			argv_add(av, "virtio-blk-pci,drive=%s,id=disk%zu,serial=%.20s%s", node, i,
				 vm->disks[i].name, boot);
		} else if (strcmp(bus, "scsi") == 0) {
			argv_add(av, "scsi-hd,bus=scsi0.0,drive=%s,id=disk%zu,serial=%.20s%s", node,
				 i, vm->disks[i].name, boot);
		} else {
			/*
			 * sata and ide both sit on q35's built-in ICH9 AHCI controller (buses
			 * ide.0-ide.5, one disk each): q35 has no PIIX IDE, and guests see
			 * an AHCI disk wherever they would look for an IDE one.
			 */
			if (ahci_port >= 6)
				return err_set(err, 0,
					       "vm %s: more than 6 sata/ide disks; q35's AHCI "
					       "controller has 6 ports",
					       vm->inst.name);
			argv_add(av, "ide-hd,bus=ide.%d,drive=%s,id=disk%zu,serial=%.20s%s",
				 ahci_port++, node, i, vm->disks[i].name, boot);
		}
	}
	return 0;
}

/*
 * Append the QEMU command line for vm to av (argv[0] first): its spec, its run
 * directory's sockets and files, and loadvm, a snapshot to resume from (or NULL).
 * Returns 0, or -1 with err when the spec cannot be expressed (too many AHCI disks).
 */
int qemu_args_build(const struct vm *vm, const char *loadvm, struct argv *av, struct kerr *err)
{
	struct json_object *spec = vm->inst.spec, *mem, *nics = NULL, *ci;
	_cleanup_free_ char *dir = opt_escape(vm->inst.dir);
	const char *accel = json_get_str(spec, "accel", "tcg");
	int disk_boot[AGENT_VM_DISKS_MAX] = {0}, nic_boot[AGENT_VM_NICS_MAX] = {0};
	size_t nnics = 0;

	json_object_object_get_ex(spec, "memory", &mem);
	if (json_object_object_get_ex(spec, "nics", &nics))
		nnics = json_array_len(nics);
	boot_order(spec, disk_boot, vm->ndisks, nic_boot, nnics);

	argv_add(av, AGENT_QEMU_BINARY);
	argv_add(av, "-name");
	argv_add(av, "%s", vm->inst.name);
	argv_add(av, "-machine");
	argv_add(av, "q35,accel=%s", accel);
	argv_add(av, "-cpu");
	if (strcmp(accel, "kvm") != 0)
		argv_add(av, "max");
	else if (json_get_bool(spec, "nested", false))
		argv_add(av, "host,+%s",
			 strcmp(vm->inst.agent->hw_virt, "svm") == 0 ? "svm" : "vmx");
	else
		argv_add(av, "host");
	argv_add(av, "-smp");
	argv_add(av, "%lld", (long long)json_get_int(spec, "vcpus", 1));
	argv_add(av, "-m");
	/* Dynamic memory starts at its maximum; the balloon takes it down later. */
	argv_add(av, "%lld", (long long)json_get_int(mem, "mb", json_get_int(mem, "max_mb", 256)));
	/* A guest's power-off pauses QEMU for the agent to see and quit (vm.c). */
	argv_add(av, "-no-shutdown");
	argv_add(av, "-nodefaults");
	argv_add(av, "-no-user-config");
	argv_add(av, "-display");
	argv_add(av, "none");
	/* A screen for the dashboard's graphical console: standard VGA, its VNC server on a
	 * unix socket in the VM's directory (never a TCP port a guest or network could
	 * reach); only the agent connects to it, relaying for the controller (vnc.c). */
	argv_add(av, "-device");
	argv_add(av, "VGA,id=video0");
	argv_add(av, "-vnc");
	argv_add(av, "unix:%s/vnc.sock", dir);
	/*
	 * QEMU may not exec, change resource limits or use old syscalls. It opens its
	 * files, devices and sockets as root, then becomes the unprivileged qemu user
	 * (-runas): that setuid is why privilege elevation stays allowed then - QEMU
	 * installs its seccomp filter first, and once it dropped root it has no
	 * capability to raise again (and spawn=deny keeps it from setuid programs).
	 */
	argv_add(av, "-sandbox");
	if (strcmp(vm->inst.agent->cfg->qemu_user, "root") != 0) {
		/* The VM's own uid (uid.c claimed it before the arguments were built). */
		uid_t uid = uid_vm_read(vm->inst.dir);

		argv_add(av, "on,obsolete=deny,elevateprivileges=allow,spawn=deny,"
			     "resourcecontrol=deny");
		argv_add(av, "-runas");
		if (uid)
			argv_add(av, "%u:%u", (unsigned)uid, (unsigned)uid);
		else
			argv_add(av, "%s", vm->inst.agent->cfg->qemu_user);
	} else {
		argv_add(av, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
			     "resourcecontrol=deny");
	}
	argv_add(av, "-msg");
	argv_add(av, "timestamp=on");
	argv_add(av, "-pidfile");
	argv_add(av, "%s/qemu.pid", vm->inst.dir);
	argv_add(av, "-chardev");
	/* Bound and listening before QEMU runs (vm.c): the agent connects at once, and
	 * QEMU greets as soon as its main loop turns. */
	argv_add(av, "socket,id=qmp,fd=%d,server=on,wait=off", AGENT_QMP_FD);
	argv_add(av, "-mon");
	argv_add(av, "chardev=qmp,mode=control");
	argv_add(av, "-chardev");
	argv_add(av, "socket,id=monitor,path=%s/monitor.sock,server=on,wait=off", dir);
	argv_add(av, "-mon");
	argv_add(av, "chardev=monitor,mode=control");
	argv_add(av, "-chardev");
	/* A socket to type into (console.c), and the log of everything the guest wrote. */
	argv_add(av,
		 "socket,id=console,path=%s/serial.sock,server=on,wait=off,logfile=%s/console.log,"
		 "logappend=on",
		 dir, dir);
	argv_add(av, "-serial");
	argv_add(av, "chardev:console");
	argv_add(av, "-device");
	argv_add(av, "virtio-balloon-pci,id=balloon0");
	/* The guest agent's port (qga.c: fsfreeze around a backup). Its socket is in the
	 * VM's run directory, root's and mode 0700 (disk.c), which QEMU creates it in
	 * before it drops root: only the agent reaches the guest agent. */
	argv_add(av, "-chardev");
	argv_add(av, "socket,id=qga,path=%s/qga.sock,server=on,wait=off", dir);
	argv_add(av, "-device");
	argv_add(av, "virtio-serial-pci,id=vserial0");
	argv_add(av, "-device");
	argv_add(av, "virtserialport,bus=vserial0.0,chardev=qga,name=org.qemu.guest_agent.0");
	if (disks_add(vm, av, disk_boot, err) < 0)
		return -1;
	if (json_object_object_get_ex(spec, "cloud_init", &ci)) {
		_cleanup_free_ char *seed = xasprintf("%s/seed.img", vm->inst.dir);

		blockdev_add(av, "raw", "seed", seed, true);
		argv_add(av, "-device");
		argv_add(av, "virtio-blk-pci,drive=seed,id=seed0,serial=cidata");
	}
	for (size_t i = 0; i < nnics; i++) {
		struct json_object *nic = json_object_array_get_idx(nics, i);
		const char *model = json_get_str(nic, "model", "virtio");
		char boot[24];

		bootindex(boot, sizeof(boot), nic_boot[i]);
		argv_add(av, "-netdev");
		if (json_get_str(nic, "network", NULL))
			/* The tap netport_vm_prepare() made and plugged into its segment. */
			argv_add(av, "tap,id=net%zu,ifname=%s,script=no,downscript=no", i,
				 json_get_str(nic, "ifname", ""));
		else
			/* Isolated user networking: the guest reaches nothing outside QEMU. */
			argv_add(av, "user,id=net%zu,restrict=on", i);
		argv_add(av, "-device");
		argv_add(av, "%s,netdev=net%zu,mac=%s,id=nic%zu%s",
			 strcmp(model, "e1000") == 0 ? "e1000" : "virtio-net-pci", i,
			 json_get_str(nic, "mac", ""), i, boot);
	}
	/* migrate.c: the guest's state comes from its source host (migrate-incoming),
	 * over TLS only: a QEMU listening without credentials would take anyone's
	 * stream as the guest's state. */
	if (vm->vm_incoming && !vm->vm_incoming_tls[0])
		return err_set(err, 0, "vm %s: a migration target's QEMU needs its TLS credentials",
			       vm->inst.name);
	if (vm->vm_incoming) {
		argv_add(av, "-incoming");
		argv_add(av, "defer");
		/* Its MIGRATION events (capability "events", set before the stream as the
		 * command line sets it, at no QMP round trip): "completed" says the guest
		 * loaded, so its resume conts at once (vmaction.c). */
		argv_add(av, "-global");
		argv_add(av, "migration.x-events=on");
		/* The migration's credentials, read before QEMU drops root (-runas):
		 * loaded at start, they cost no object-add round trip once QMP answers. */
		{
			argv_add(av, "-object");
			argv_add(av, "tls-creds-x509,id=%s,dir=%s,endpoint=server,verify-peer=on",
				 vm->vm_incoming_tls_id, vm->vm_incoming_tls);
			/* ... and the migration's parameter tls-creds names them from the
			 * start (no migrate-set-parameters round trip): a QEMU that cannot
			 * apply a -global exits, so one that answers QMP has it, and
			 * migrate-incoming never listens without TLS. */
			argv_add(av, "-global");
			argv_add(av, "migration.tls-creds=%s", vm->vm_incoming_tls_id);
		}
		/* Local disks: the guest stays paused after the copy until the source ended
		 * its mirror and the NBD server stopped (migrate-resume); it may not write
		 * to a disk the mirror still writes to. */
		if (vm->vm_incoming_held)
			argv_add(av, "-S");
	}
	if (loadvm) {
		argv_add(av, "-loadvm");
		argv_add(av, "%s", loadvm);
	}
	return 0;
}
