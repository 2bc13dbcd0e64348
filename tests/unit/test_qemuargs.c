/*
 * test_qemuargs.c - the QEMU command line a VM's SPEC makes (agentd/qemuargs.c), on a
 * few SPECs: what stage 2 (migration's -incoming, backups' extra block nodes) will
 * change is pinned down here first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agentd.h"

struct fixture {
	struct agent_config cfg;
	struct agent agent;
	struct vm vm;
	struct argv av;
};

/* A VM as vm_register() and vm_disks_resolve() would leave it, for spec (JSON). */
static void vm_setup(struct fixture *f, const char *spec, const char *qemu_user)
{
	struct json_object *disks;

	memset(f, 0, sizeof(*f));
	f->cfg.qemu_user = (char *)qemu_user;
	f->agent.cfg = &f->cfg;
	f->vm.inst.agent = &f->agent;
	f->vm.inst.spec = json_tokener_parse(spec);
	assert_non_null(f->vm.inst.spec);
	snprintf(f->vm.inst.name, sizeof(f->vm.inst.name), "%s",
		 json_get_str(f->vm.inst.spec, "name", ""));
	snprintf(f->vm.inst.dir, sizeof(f->vm.inst.dir), "/pool/instances/%s", f->vm.inst.name);
	if (json_object_object_get_ex(f->vm.inst.spec, "disks", &disks)) {
		for (size_t i = 0; i < json_array_len(disks); i++) {
			struct json_object *d = json_object_array_get_idx(disks, i);
			struct vm_disk *vd = &f->vm.disks[f->vm.ndisks++];

			snprintf(vd->name, sizeof(vd->name), "%s", json_get_str(d, "name", ""));
			snprintf(vd->abs, sizeof(vd->abs), "/pool/%s", json_get_str(d, "path", ""));
		}
	}
}

static void vm_teardown(struct fixture *f)
{
	argv_free(&f->av);
	json_object_put(f->vm.inst.spec);
}

/* The index of the argument equal to s, or -1. */
static int arg_find(const struct argv *av, const char *s)
{
	for (size_t i = 0; i < av->n; i++)
		if (strcmp(av->v[i], s) == 0)
			return (int)i;
	return -1;
}

/* The argument after the first flag, or "". */
static const char *after(const struct argv *av, const char *flag)
{
	int i = arg_find(av, flag);

	return i >= 0 && (size_t)i + 1 < av->n ? av->v[i + 1] : "";
}

static void test_minimal_tcg(void **state)
{
	struct fixture f;
	struct kerr err = {0};

	(void)state;
	vm_setup(&f,
		 "{\"name\":\"web1\",\"type\":\"vm\",\"vcpus\":2,\"memory\":{\"mb\":512},"
		 "\"accel\":\"tcg\",\"disks\":[{\"name\":\"root\",\"bus\":\"virtio\","
		 "\"pool\":\"local\",\"path\":\"web1/root.qcow2\"}]}",
		 "kumo-qemu");
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), 0);
	assert_string_equal(f.av.v[0], AGENT_QEMU_BINARY);
	assert_null(f.av.v[f.av.n]);
	assert_string_equal(after(&f.av, "-name"), "web1");
	assert_string_equal(after(&f.av, "-machine"), "q35,accel=tcg");
	assert_string_equal(after(&f.av, "-cpu"), "max");
	assert_string_equal(after(&f.av, "-smp"), "2");
	assert_string_equal(after(&f.av, "-m"), "512");
	assert_string_equal(after(&f.av, "-runas"), "kumo-qemu");
	assert_string_equal(after(&f.av, "-pidfile"), "/pool/instances/web1/qemu.pid");
	assert_true(arg_find(&f.av, "-no-shutdown") > 0);
	/* Without a boot list the first disk boots. */
	assert_true(arg_find(&f.av, "virtio-blk-pci,drive=d0,id=disk0,serial=root,bootindex=1") >
		    0);
	assert_int_equal(arg_find(&f.av, "-loadvm"), -1);
	/* The agent's QMP socket is the fd vm.c hands over, bound at qmp.sock. */
	assert_true(arg_find(&f.av, "socket,id=qmp,fd=3,server=on,wait=off") > 0);
	/* The guest agent's port, on a socket in the VM's run directory (backup freeze). */
	assert_true(arg_find(&f.av, "socket,id=qga,path=/pool/instances/web1/qga.sock,server=on,"
				    "wait=off") > 0);
	assert_true(arg_find(&f.av, "virtio-serial-pci,id=vserial0") > 0);
	assert_true(arg_find(&f.av, "virtserialport,bus=vserial0.0,chardev=qga,"
				    "name=org.qemu.guest_agent.0") > 0);
	vm_teardown(&f);
}

/* Dynamic memory starts at max_mb; a snapshot to resume is -loadvm; root: no -runas. */
static void test_balloon_loadvm_root(void **state)
{
	struct fixture f;
	struct kerr err = {0};

	(void)state;
	vm_setup(&f,
		 "{\"name\":\"db\",\"type\":\"vm\",\"vcpus\":1,\"memory\":{\"min_mb\":256,"
		 "\"max_mb\":1024},\"accel\":\"tcg\",\"disks\":[]}",
		 "root");
	assert_int_equal(qemu_args_build(&f.vm, "snap1", &f.av, &err), 0);
	assert_string_equal(after(&f.av, "-m"), "1024");
	assert_string_equal(after(&f.av, "-loadvm"), "snap1");
	assert_int_equal(arg_find(&f.av, "-runas"), -1);
	vm_teardown(&f);
}

/* A migration's target: -incoming defer with MIGRATION events and its TLS credentials
 * (never without them); held paused (-S) only with local disks. */
static void test_incoming(void **state)
{
	struct fixture f;
	struct kerr err = {0};

	(void)state;
	vm_setup(&f,
		 "{\"name\":\"mv\",\"type\":\"vm\",\"vcpus\":1,\"memory\":{\"mb\":256},"
		 "\"accel\":\"tcg\",\"disks\":[]}",
		 "root");
	f.vm.vm_incoming = true;
	/* No credentials, no QEMU: it would listen in the clear. */
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), -1);
	assert_non_null(strstr(err.msg, "TLS credentials"));
	argv_free(&f.av);
	memset(&f.av, 0, sizeof(f.av));
	/* The migration's server credentials are loaded as QEMU starts, peers verified. */
	snprintf(f.vm.vm_incoming_tls, sizeof(f.vm.vm_incoming_tls), "/tmp/kumo-migtls-abc");
	snprintf(f.vm.vm_incoming_tls_id, sizeof(f.vm.vm_incoming_tls_id), "kumo-tls-op1");
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), 0);
	assert_string_equal(after(&f.av, "-incoming"), "defer");
	assert_int_equal(arg_find(&f.av, "-S"), -1);
	assert_string_equal(
		after(&f.av, "-object"),
		"tls-creds-x509,id=kumo-tls-op1,dir=/tmp/kumo-migtls-abc,endpoint=server,"
		"verify-peer=on");
	/* ... named as the migration's tls-creds from the start: migrate-incoming is its
	 * only QMP step, and it never listens without TLS; and its MIGRATION events: the
	 * resume knows when the load ended. */
	assert_true(arg_find(&f.av, "migration.tls-creds=kumo-tls-op1") > 0);
	assert_true(arg_find(&f.av, "migration.x-events=on") > 0);
	argv_free(&f.av);
	memset(&f.av, 0, sizeof(f.av));
	f.vm.vm_incoming_held = true;
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), 0);
	assert_string_equal(after(&f.av, "-incoming"), "defer");
	assert_true(arg_find(&f.av, "-S") > 0);
	argv_free(&f.av);
	memset(&f.av, 0, sizeof(f.av));
	/* An ordinary start has none of it. */
	f.vm.vm_incoming = f.vm.vm_incoming_held = false;
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), 0);
	assert_int_equal(arg_find(&f.av, "-incoming"), -1);
	assert_int_equal(arg_find(&f.av, "-global"), -1);
	vm_teardown(&f);
}

/* One virtio-scsi HBA for all scsi disks; sata on AHCI ports; a user-mode NIC. */
static void test_buses_and_nic(void **state)
{
	struct fixture f;
	struct kerr err = {0};
	int hba = 0;

	(void)state;
	vm_setup(&f,
		 "{\"name\":\"mix\",\"type\":\"vm\",\"vcpus\":1,\"memory\":{\"mb\":256},"
		 "\"accel\":\"tcg\",\"disks\":["
		 "{\"name\":\"a\",\"bus\":\"scsi\",\"pool\":\"local\",\"path\":\"m/a\"},"
		 "{\"name\":\"b\",\"bus\":\"scsi\",\"pool\":\"local\",\"path\":\"m/b\"},"
		 "{\"name\":\"c\",\"bus\":\"sata\",\"pool\":\"local\",\"path\":\"m/c\"}],"
		 "\"nics\":[{\"model\":\"e1000\",\"mac\":\"52:54:00:00:00:01\"}]}",
		 "kumo-qemu");
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), 0);
	for (size_t i = 0; i < f.av.n; i++)
		hba += strcmp(f.av.v[i], "virtio-scsi-pci,id=scsi0") == 0;
	assert_int_equal(hba, 1);
	assert_string_equal(after(&f.av, "-netdev"), "user,id=net0,restrict=on");
	assert_true(arg_find(&f.av, "e1000,netdev=net0,mac=52:54:00:00:00:01,id=nic0") > 0);
	vm_teardown(&f);
}

/* q35's AHCI has six ports: a seventh sata/ide disk is refused, not silently lost. */
static void test_too_many_ahci(void **state)
{
	struct fixture f;
	struct kerr err = {0};
	char spec[2048];
	size_t len;

	(void)state;
	len = (size_t)snprintf(spec, sizeof(spec),
			       "{\"name\":\"ahci\",\"type\":\"vm\",\"vcpus\":1,\"memory\":{\"mb\":"
			       "256},\"accel\":\"tcg\",\"disks\":[");
	for (int i = 0; i < 7; i++)
		len += (size_t)snprintf(spec + len, sizeof(spec) - len,
					"%s{\"name\":\"d%d\",\"bus\":\"ide\",\"pool\":\"local\","
					"\"path\":\"x/d%d\"}",
					i ? "," : "", i, i);
	snprintf(spec + len, sizeof(spec) - len, "]}");
	vm_setup(&f, spec, "kumo-qemu");
	assert_int_equal(qemu_args_build(&f.vm, NULL, &f.av, &err), -1);
	assert_non_null(strstr(err.msg, "6 ports"));
	vm_teardown(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_tcg),   cmocka_unit_test(test_balloon_loadvm_root),
		cmocka_unit_test(test_buses_and_nic), cmocka_unit_test(test_too_many_ahci),
		cmocka_unit_test(test_incoming),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
