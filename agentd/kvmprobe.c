/*
 * kvmprobe.c - does KVM really run a guest here, at hardware speed?
 *
 * /dev/kvm existing proves little. Under nested virtualisation a guest may hang, and
 * on these lab machines /dev/kvm is kvm_pvm, which runs an ordinary guest by emulating
 * it at some 2 million instructions a second: a 5-instruction guest "works", a kernel
 * never boots. So `kumo-agentd --kvm-probe` builds a tiny real-mode guest in a 4 KiB
 * slot that counts down 10 million times and then does mov al, 0x4b; out 0x10, al;
 * hlt. Real KVM finishes in milliseconds; the probe exits 0 only if the vCPU comes
 * back with that byte on port 0x10 before its alarm. The agent runs it as a child
 * with a deadline too, so a hanging probe costs a few seconds of one process and
 * never the loop, and caches the answer for the facts.
 */
#include "agentd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "child.h"
#include "util.h"

#define GUEST_ADDR     0x1000
#define GUEST_MEM_SIZE 0x1000
#define PROBE_PORT     0x10
#define PROBE_VALUE    0x4b
/*
 * The child's own deadline: the countdown takes real KVM milliseconds, an emulator
 * tens of seconds. The agent's timer (AGENT_KVM_PROBE_TIMEOUT_MS) is the backstop.
 */
#define CHILD_ALARM_S 2

struct kvmprobe_waiter {
	kvmprobe_cb cb;
	void *data;
	struct kvmprobe_waiter *next;
};

struct kvmprobe_run {
	struct agent *agent;
	struct child *child; /* common/child.h; NULL once it ended */
	bool reported;
	struct kvmprobe_waiter *waiters;
	struct kvmprobe_run *next; /* in agent->kvm_runs */
};

static int probe_fail(const char *what)
{
	fprintf(stderr, "%s --kvm-probe: %s: %s\n", AGENT_PROG, what, strerror(errno));
	return 1;
}

/*
 * The child side of the probe: run one tiny guest. Returns the process exit code,
 * 0 only if the guest ran. Needs read-write access to /dev/kvm (root or group kvm).
 */
int kvmprobe_child_main(void)
{
	/* clang-format off */
	static const unsigned char code[] = {
		0x66, 0xb9, 0x80, 0x96, 0x98, 0x00, /* mov ecx, 10000000 */
		0x66, 0x49,			    /* 1: dec ecx */
		0x75, 0xfc,			    /* jnz 1b */
		0xb0, PROBE_VALUE,		    /* mov al, 0x4b */
		0xe6, PROBE_PORT,		    /* out 0x10, al */
		0xf4,				    /* hlt */
	};
	/* clang-format on */
	_cleanup_close_ int kvm = -1, vm = -1, vcpu = -1;
	struct kvm_userspace_memory_region region;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_run *run;
	unsigned char *mem;
	int runsize;

	alarm(CHILD_ALARM_S);
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		return probe_fail("cannot open /dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		fprintf(stderr, "%s --kvm-probe: unexpected KVM API version\n", AGENT_PROG);
		return 1;
	}
	vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
	if (vm < 0)
		return probe_fail("KVM_CREATE_VM");
	mem = mmap(NULL, GUEST_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return probe_fail("cannot map guest memory");
	memcpy(mem, code, sizeof(code));
	region = (struct kvm_userspace_memory_region){
		.slot = 0,
		.guest_phys_addr = GUEST_ADDR,
		.memory_size = GUEST_MEM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return probe_fail("KVM_SET_USER_MEMORY_REGION");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
	if (vcpu < 0)
		return probe_fail("KVM_CREATE_VCPU");
	runsize = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
	if (runsize < (int)sizeof(*run))
		return probe_fail("KVM_GET_VCPU_MMAP_SIZE");
	run = mmap(NULL, (size_t)runsize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		return probe_fail("cannot map the vCPU's run area");

	/* Real mode, flat code segment at 0: rip is the guest-physical address. */
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		return probe_fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		return probe_fail("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = GUEST_ADDR;
	regs.rflags = 0x2; /* bit 1 is reserved and must be set */
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		return probe_fail("KVM_SET_REGS");

	if (ioctl(vcpu, KVM_RUN, NULL) < 0)
		return probe_fail("KVM_RUN");
	if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT ||
	    run->io.port != PROBE_PORT || run->io.size != 1 ||
	    *((unsigned char *)run + run->io.data_offset) != PROBE_VALUE) {
		fprintf(stderr, "%s --kvm-probe: the guest stopped with exit reason %u\n",
			AGENT_PROG, run->exit_reason);
		return 1;
	}
	return 0;
}

static void run_free(struct kvmprobe_run *run)
{
	for (struct kvmprobe_run **pp = &run->agent->kvm_runs; *pp; pp = &(*pp)->next) {
		if (*pp == run) {
			*pp = run->next;
			break;
		}
	}
	free(run);
}

/* Cache the answer and tell everyone waiting for this run, once. */
static void run_report(struct kvmprobe_run *run, bool usable, const char *why)
{
	struct agent *a = run->agent;
	struct kvmprobe_waiter *w, *next;

	if (run->reported)
		return;
	run->reported = true;
	if (a->kvm_current == run)
		a->kvm_current = NULL;
	if (!a->stopping) {
		if (!a->kvm_probed || a->kvm_usable != usable) {
			if (usable)
				log_info("kvm: a probe guest ran; accel kvm");
			else
				log_info("kvm: no probe guest ran (%s); accel tcg", why);
		} else {
			log_debug("kvm: probe %s", usable ? "guest ran" : why);
		}
		a->kvm_probed = true;
		a->kvm_usable = usable;
	}
	for (w = run->waiters, run->waiters = NULL; w; w = next) {
		next = w->next;
		w->cb(a, usable, w->data);
		free(w);
	}
}

static void run_done_cb(const struct child_result *r, void *data)
{
	struct kvmprobe_run *run = data;
	char why[80];

	run->child = NULL;
	if (r->timed_out)
		snprintf(why, sizeof(why), "no answer within the deadline");
	else if (r->abandoned)
		snprintf(why, sizeof(why), "the agent is stopping");
	else if (r->signal == SIGALRM)
		snprintf(why, sizeof(why), "the guest was not done within %d s", CHILD_ALARM_S);
	else if (r->signal)
		snprintf(why, sizeof(why), "the probe was killed by signal %d", r->signal);
	else
		snprintf(why, sizeof(why), "the probe exited with status %lld",
			 (long long)r->status);
	run_report(run, child_result_ok(r), why);
	run_free(run);
}

static struct kvmprobe_run *run_start(struct agent *a, struct kerr *err)
{
	struct kvmprobe_run *run = xcalloc(1, sizeof(*run));
	char *args[] = {AGENT_PROG, "--kvm-probe", NULL};
	/* The binary we were started from, even if it was replaced since. */
	struct child_opts opts = {
		.file = "/proc/self/exe",
		.argv = args,
		.err_mode = CHILD_ERR_IGNORE,
		.timeout_ms = AGENT_KVM_PROBE_TIMEOUT_MS,
	};

	run->agent = a;
	run->child = child_run(a->loop, &opts, run_done_cb, run, err);
	if (run->child == NULL) {
		free(run);
		err_prefix(err, "cannot start the kvm probe: ");
		return NULL;
	}
	run->next = a->kvm_runs;
	a->kvm_runs = run;
	return run;
}

/*
 * Ask whether KVM runs a guest: cb(a, usable, data) is called on the loop when the
 * probe child exits or its deadline passes (within AGENT_KVM_PROBE_TIMEOUT_MS); a
 * request while a probe runs joins it. The answer is also cached in a->kvm_usable.
 * Returns 0, or -1 with err when no probe could start (cb is then not called).
 */
int kvmprobe_request(struct agent *a, kvmprobe_cb cb, void *data, struct kerr *err)
{
	struct kvmprobe_waiter *w;

	if (a->stopping)
		return err_set(err, 0, "the agent is stopping");
	if (a->kvm_current == NULL) {
		a->kvm_current = run_start(a, err);
		if (a->kvm_current == NULL) {
			a->kvm_probed = true;
			a->kvm_usable = false;
			return -1;
		}
	}
	w = xcalloc(1, sizeof(*w));
	w->cb = cb;
	w->data = data;
	w->next = a->kvm_current->waiters;
	a->kvm_current->waiters = w;
	return 0;
}

/*
 * At shutdown: kill probe children still running and close their handles. Waiters
 * are called with usable false and find a->stopping set. The probe child is the
 * agent's own helper, not a workload, so killing it is right.
 */
void kvmprobe_stop(struct agent *a)
{
	for (struct kvmprobe_run *run = a->kvm_runs; run; run = run->next) {
		run_report(run, false, "the agent is stopping");
		if (run->child)
			child_abandon(run->child, true);
	}
}
