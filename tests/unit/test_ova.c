/*
 * test_ova.c - controllerd/ova.c: the check every uploaded OVA gets before it is
 * answered. OVAs are built here with tar(1) from descriptors written by the test;
 * the hostile ones must be refused with a reason, the good one mapped exactly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controllerd.h"
#include "util.h"

struct controller ctl;

static char base[64];

#define OVF_HEAD                                                                                   \
	"<?xml version=\"1.0\"?>\n"                                                                \
	"<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" "                              \
	"xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" "                                    \
	"xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"                          \
	"CIM_ResourceAllocationSettingData\">\n"

/* A descriptor: 2 vCPUs, 256 MiB, an IDE and a SATA controller, the disk on SATA, an
 * E1000 and a VMXNET3 NIC, a sound card; its one file is href. */
static char *ovf(const char *href)
{
	return xasprintf(
		OVF_HEAD
		"<References><File ovf:id=\"f1\" ovf:href=\"%s\"/></References>\n"
		"<DiskSection><Disk ovf:diskId=\"d1\" ovf:fileRef=\"f1\"/></DiskSection>\n"
		"<VirtualSystem ovf:id=\"vm\"><VirtualHardwareSection>\n"
		"<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3"
		"</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>\n"
		"<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
		"<rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4"
		"</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity>"
		"</Item>\n"
		"<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>5"
		"</rasd:ResourceType></Item>\n"
		"<Item><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>AHCI"
		"</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>\n"
		"<Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>5"
		"</rasd:InstanceID><rasd:Parent>4</rasd:Parent><rasd:ResourceType>17"
		"</rasd:ResourceType></Item>\n"
		"<Item><rasd:Address>52-54-00-01-02-03</rasd:Address><rasd:InstanceID>6"
		"</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType>"
		"<rasd:ResourceType>10</rasd:ResourceType></Item>\n"
		"<Item><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>VmxNet3"
		"</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>\n"
		"<Item><rasd:ElementName>sound</rasd:ElementName><rasd:InstanceID>8"
		"</rasd:InstanceID><rasd:ResourceType>35</rasd:ResourceType></Item>\n"
		"</VirtualHardwareSection></VirtualSystem></Envelope>\n",
		href);
}

static void put(const char *name, const char *text)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", base, name);

	assert_int_equal(file_write_atomic(p, text, strlen(text), 0644), 0);
}

/* tar the named files of base (in order, ustar) into base/t.ova and check it. */
static int check(const char *files, struct json_object **out, char *why)
{
	_cleanup_free_ char *cmd = xasprintf("cd %s && rm -f t.ova && tar --format=ustar -cf "
					     "t.ova %s 2>/dev/null",
					     base, files);
	_cleanup_free_ char *ova = xasprintf("%s/t.ova", base);
	_cleanup_free_ char *dir = xasprintf("%s/scratch", base);
	int ret;

	assert_int_equal(system(cmd), 0);
	*out = NULL;
	ret = ova_check(ova, dir, out, why, 512);
	assert_int_equal(access(dir, F_OK), -1); /* nothing left, whatever the result */
	return ret;
}

static void test_good(void **state)
{
	_cleanup_free_ char *o = ovf("disk1.vmdk");
	struct json_object *out, *inst, *d, *n;
	char why[512] = "";

	put("vm.ovf", o);
	put("disk1.vmdk", "not really a vmdk: qemu-img checks it after the answer");
	assert_int_equal(check("vm.ovf disk1.vmdk", &out, why), 0);
	inst = json_object_object_get(out, "instance");
	assert_int_equal(json_get_int(inst, "vcpus", 0), 2);
	assert_int_equal(json_get_int(json_object_object_get(inst, "memory"), "mb", 0), 256);
	d = json_object_array_get_idx(json_object_object_get(inst, "disks"), 0);
	assert_string_equal(json_get_str(d, "bus", ""), "sata");
	assert_string_equal(json_get_str(d, "file", ""), "disk1.vmdk");
	n = json_object_object_get(inst, "nics");
	assert_int_equal(json_array_len(n), 2);
	assert_string_equal(json_get_str(json_object_array_get_idx(n, 0), "model", ""), "e1000");
	assert_string_equal(json_get_str(json_object_array_get_idx(n, 0), "mac", ""),
			    "52:54:00:01:02:03");
	assert_string_equal(json_get_str(json_object_array_get_idx(n, 1), "model", ""), "virtio");
	/* The VMXNET3 mapping and the sound card are noted, not dropped. */
	assert_int_equal(json_array_len(json_object_object_get(out, "notes")), 2);
	json_object_put(out);
}

static void refused(const char *files, const char *reason)
{
	struct json_object *out;
	char why[512] = "";

	assert_int_equal(check(files, &out, why), -1);
	if (strstr(why, reason) == NULL)
		fail_msg("refused for '%s', not '%s'", why, reason);
	assert_null(out);
}

static void test_hostile(void **state)
{
	_cleanup_free_ char *o = ovf("disk1.vmdk"), *dotdot = ovf("../disk1.vmdk");
	_cleanup_free_ char *sub = xasprintf("%s/sub", base);
	_cleanup_free_ char *laughs = xasprintf(
		"<?xml version=\"1.0\"?><!DOCTYPE Envelope [<!ENTITY a \"aaaaaaaa\">"
		"<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;\">]>"
		"<Envelope>&c;</Envelope>\n");
	char mf[256];

	put("disk1.vmdk", "disk");
	put("vm.ovf", o);
	refused("vm.ovf", "missing from the OVA");
	put("vm.ovf", dotdot);
	refused("vm.ovf disk1.vmdk", "refused");
	put("vm.ovf", laughs);
	refused("vm.ovf disk1.vmdk", ""); /* entity expansion: never a parsed descriptor */
	put("vm.ovf", "<?xml version=\"1.0\"?><!DOCTYPE Envelope [<!ENTITY a \"x\">]>"
		      "<Envelope/>\n");
	refused("vm.ovf disk1.vmdk", "DOCTYPE");
	put("vm.ovf", "<Envelope><VirtualSystem>");
	refused("vm.ovf disk1.vmdk", "not well-formed");
	put("vm.ovf", o);
	snprintf(mf, sizeof(mf), "SHA256(vm.ovf)= %064d\nSHA256(disk1.vmdk)= %064d\n", 0, 0);
	put("t.mf", mf);
	refused("vm.ovf disk1.vmdk t.mf", "does not match");
	snprintf(mf, sizeof(mf), "SHA256(vm.ovf)= %064d\n", 0);
	put("t.mf", mf);
	refused("vm.ovf disk1.vmdk t.mf", "");
	assert_int_equal(mkdir(sub, 0755), 0);
	put("sub/disk1.vmdk", "disk");
	refused("vm.ovf sub/disk1.vmdk", "flat");
	{
		_cleanup_free_ char *f = xasprintf("%s/sub/disk1.vmdk", base);

		unlink(f);
		rmdir(sub);
	}
}

static void test_not_tar(void **state)
{
	_cleanup_free_ char *ova = xasprintf("%s/junk.ova", base);
	_cleanup_free_ char *dir = xasprintf("%s/scratch", base);
	struct json_object *out = NULL;
	char why[512] = "";

	put("junk.ova", "this is not a tar archive at all");
	assert_int_equal(ova_check(ova, dir, &out, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "OVA"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_not_tar),
	};
	int ret;

	snprintf(base, sizeof(base), "/tmp/kumo-ova-XXXXXX");
	if (mkdtemp(base) == NULL)
		return 1;
	ret = cmocka_run_group_tests(tests, NULL, NULL);
	{
		_cleanup_free_ char *cmd = xasprintf("rm -rf %s", base);

		if (system(cmd) != 0)
			ret = 1;
	}
	return ret;
}
