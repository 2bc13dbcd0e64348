/*
 * seccomp.c - the containers' seccomp profile: an allow-list modelled on Docker's
 * default profile (moby profiles/seccomp/default.json).
 *
 * Everything not listed fails with EPERM (defaultAction SCMP_ACT_ERRNO): kernel
 * modules, kexec, mounts, namespaces (unshare, setns, clone with namespace flags),
 * keyrings, BPF, perf, io_uring, userfaultfd, clocks, swap, reboot, accounting,
 * quotas, handle-based opens, cross-process memory access. Syscalls this kernel or
 * libseccomp does not know are skipped by runc, so one list serves every kernel.
 *
 * Conditional rules as Docker's, for a container without CAP_SYS_ADMIN, CAP_SYS_PTRACE
 * and the like (which no container here holds): socket except AF_VSOCK; clone without
 * namespace flags (clone3 passes its flags in memory, out of seccomp's sight: ENOSYS
 * makes libc fall back to clone); personality only with the values Docker allows;
 * chroot, as every container holds CAP_SYS_CHROOT.
 */
#include "agentd.h"

#include <errno.h>

#include "util.h"

#define AF_VSOCK_DOMAIN	  40
#define CLONE_NS_FLAGS	  0x7E020000 /* CLONE_NEWNS..CLONE_NEWNET, CLONE_NEWCGROUP */
#define PERSONALITY_QUERY 0xffffffffLL

static const char *const allowed[] = {
	"accept",
	"accept4",
	"access",
	"adjtimex",
	"alarm",
	"arch_prctl",
	"bind",
	"brk",
	"cachestat",
	"capget",
	"capset",
	"chdir",
	"chmod",
	"chown",
	"chown32",
	"chroot",
	"clock_adjtime",
	"clock_adjtime64",
	"clock_getres",
	"clock_getres_time64",
	"clock_gettime",
	"clock_gettime64",
	"clock_nanosleep",
	"clock_nanosleep_time64",
	"close",
	"close_range",
	"connect",
	"copy_file_range",
	"creat",
	"dup",
	"dup2",
	"dup3",
	"epoll_create",
	"epoll_create1",
	"epoll_ctl",
	"epoll_ctl_old",
	"epoll_pwait",
	"epoll_pwait2",
	"epoll_wait",
	"epoll_wait_old",
	"eventfd",
	"eventfd2",
	"execve",
	"execveat",
	"exit",
	"exit_group",
	"faccessat",
	"faccessat2",
	"fadvise64",
	"fadvise64_64",
	"fallocate",
	"fanotify_mark",
	"fchdir",
	"fchmod",
	"fchmodat",
	"fchmodat2",
	"fchown",
	"fchown32",
	"fchownat",
	"fcntl",
	"fcntl64",
	"fdatasync",
	"fgetxattr",
	"flistxattr",
	"flock",
	"fork",
	"fremovexattr",
	"fsetxattr",
	"fstat",
	"fstat64",
	"fstatat64",
	"fstatfs",
	"fstatfs64",
	"fsync",
	"ftruncate",
	"ftruncate64",
	"futex",
	"futex_requeue",
	"futex_time64",
	"futex_wait",
	"futex_waitv",
	"futex_wake",
	"futimesat",
	"getcpu",
	"getcwd",
	"getdents",
	"getdents64",
	"getegid",
	"getegid32",
	"geteuid",
	"geteuid32",
	"getgid",
	"getgid32",
	"getgroups",
	"getgroups32",
	"getitimer",
	"getpeername",
	"getpgid",
	"getpgrp",
	"getpid",
	"getppid",
	"getpriority",
	"getrandom",
	"getresgid",
	"getresgid32",
	"getresuid",
	"getresuid32",
	"getrlimit",
	"get_robust_list",
	"getrusage",
	"getsid",
	"getsockname",
	"getsockopt",
	"get_thread_area",
	"gettid",
	"gettimeofday",
	"getuid",
	"getuid32",
	"getxattr",
	"inotify_add_watch",
	"inotify_init",
	"inotify_init1",
	"inotify_rm_watch",
	"io_cancel",
	"ioctl",
	"io_destroy",
	"io_getevents",
	"io_pgetevents",
	"io_pgetevents_time64",
	"ioprio_get",
	"ioprio_set",
	"io_setup",
	"io_submit",
	"ipc",
	"kill",
	"landlock_add_rule",
	"landlock_create_ruleset",
	"landlock_restrict_self",
	"lchown",
	"lchown32",
	"lgetxattr",
	"link",
	"linkat",
	"listen",
	"listxattr",
	"llistxattr",
	"_llseek",
	"lremovexattr",
	"lseek",
	"lsetxattr",
	"lstat",
	"lstat64",
	"madvise",
	"map_shadow_stack",
	"membarrier",
	"memfd_create",
	"memfd_secret",
	"mincore",
	"mkdir",
	"mkdirat",
	"mknod",
	"mknodat",
	"mlock",
	"mlock2",
	"mlockall",
	"mmap",
	"mmap2",
	"modify_ldt",
	"mprotect",
	"mq_getsetattr",
	"mq_notify",
	"mq_open",
	"mq_timedreceive",
	"mq_timedreceive_time64",
	"mq_timedsend",
	"mq_timedsend_time64",
	"mq_unlink",
	"mremap",
	"msgctl",
	"msgget",
	"msgrcv",
	"msgsnd",
	"msync",
	"munlock",
	"munlockall",
	"munmap",
	"nanosleep",
	"newfstatat",
	"_newselect",
	"open",
	"openat",
	"openat2",
	"pause",
	"pidfd_getfd",
	"pidfd_open",
	"pidfd_send_signal",
	"pipe",
	"pipe2",
	"pkey_alloc",
	"pkey_free",
	"pkey_mprotect",
	"poll",
	"ppoll",
	"ppoll_time64",
	"prctl",
	"pread64",
	"preadv",
	"preadv2",
	"prlimit64",
	"process_mrelease",
	"pselect6",
	"pselect6_time64",
	"ptrace",
	"pwrite64",
	"pwritev",
	"pwritev2",
	"read",
	"readahead",
	"readlink",
	"readlinkat",
	"readv",
	"recv",
	"recvfrom",
	"recvmmsg",
	"recvmmsg_time64",
	"recvmsg",
	"remap_file_pages",
	"removexattr",
	"rename",
	"renameat",
	"renameat2",
	"restart_syscall",
	"rmdir",
	"rseq",
	"rt_sigaction",
	"rt_sigpending",
	"rt_sigprocmask",
	"rt_sigqueueinfo",
	"rt_sigreturn",
	"rt_sigsuspend",
	"rt_sigtimedwait",
	"rt_sigtimedwait_time64",
	"rt_tgsigqueueinfo",
	"sched_getaffinity",
	"sched_getattr",
	"sched_getparam",
	"sched_get_priority_max",
	"sched_get_priority_min",
	"sched_getscheduler",
	"sched_rr_get_interval",
	"sched_rr_get_interval_time64",
	"sched_setaffinity",
	"sched_setattr",
	"sched_setparam",
	"sched_setscheduler",
	"sched_yield",
	"seccomp",
	"select",
	"semctl",
	"semget",
	"semop",
	"semtimedop",
	"semtimedop_time64",
	"send",
	"sendfile",
	"sendfile64",
	"sendmmsg",
	"sendmsg",
	"sendto",
	"setfsgid",
	"setfsgid32",
	"setfsuid",
	"setfsuid32",
	"setgid",
	"setgid32",
	"setgroups",
	"setgroups32",
	"setitimer",
	"setpgid",
	"setpriority",
	"setregid",
	"setregid32",
	"setresgid",
	"setresgid32",
	"setresuid",
	"setresuid32",
	"setreuid",
	"setreuid32",
	"setrlimit",
	"set_robust_list",
	"setsid",
	"setsockopt",
	"set_thread_area",
	"set_tid_address",
	"setuid",
	"setuid32",
	"setxattr",
	"shmat",
	"shmctl",
	"shmdt",
	"shmget",
	"shutdown",
	"sigaltstack",
	"signalfd",
	"signalfd4",
	"sigprocmask",
	"sigreturn",
	"socketcall",
	"socketpair",
	"splice",
	"stat",
	"stat64",
	"statfs",
	"statfs64",
	"statx",
	"symlink",
	"symlinkat",
	"sync",
	"sync_file_range",
	"syncfs",
	"sysinfo",
	"tee",
	"tgkill",
	"time",
	"timer_create",
	"timer_delete",
	"timer_getoverrun",
	"timer_gettime",
	"timer_gettime64",
	"timer_settime",
	"timer_settime64",
	"timerfd_create",
	"timerfd_gettime",
	"timerfd_gettime64",
	"timerfd_settime",
	"timerfd_settime64",
	"times",
	"tkill",
	"truncate",
	"truncate64",
	"ugetrlimit",
	"umask",
	"uname",
	"unlink",
	"unlinkat",
	"utime",
	"utimensat",
	"utimensat_time64",
	"utimes",
	"vfork",
	"vmsplice",
	"wait4",
	"waitid",
	"waitpid",
	"write",
	"writev",
	NULL,
};

/* personality(2) values Docker allows: Linux, its 32-bit-address and UNAME26 flavours,
 * and the query. */
static const long long personalities[] = {0x0, 0x8, 0x20000, 0x20008, PERSONALITY_QUERY};

static struct json_object *names_of(const char *const *list)
{
	struct json_object *arr = json_object_new_array();

	for (size_t i = 0; list[i]; i++)
		json_object_array_add(arr, json_object_new_string(list[i]));
	return arr;
}

/* A rule for one syscall, with up to one argument condition (op NULL: none). */
static struct json_object *rule(const char *name, const char *action, int errno_ret, const char *op,
				long long value, long long value_two)
{
	struct json_object *r = json_object_new_object(), *names = json_object_new_array();

	json_object_array_add(names, json_object_new_string(name));
	json_object_object_add(r, "names", names);
	json_object_object_add(r, "action", json_object_new_string(action));
	if (errno_ret)
		json_object_object_add(r, "errnoRet", json_object_new_int(errno_ret));
	if (op) {
		struct json_object *args = json_object_new_array(), *arg = json_object_new_object();

		json_object_object_add(arg, "index", json_object_new_int(0));
		json_object_object_add(arg, "value", json_object_new_int64(value));
		json_object_object_add(arg, "valueTwo", json_object_new_int64(value_two));
		json_object_object_add(arg, "op", json_object_new_string(op));
		json_object_array_add(args, arg);
		json_object_object_add(r, "args", args);
	}
	return r;
}

/*
 * The OCI "seccomp" section of a container's config.json: a new object.
 */
struct json_object *seccomp_profile_build(void)
{
	struct json_object *sc = json_object_new_object(), *rules = json_object_new_array();
	struct json_object *arches = json_object_new_array(), *all;

	json_object_object_add(sc, "defaultAction", json_object_new_string("SCMP_ACT_ERRNO"));
	json_object_object_add(sc, "defaultErrnoRet", json_object_new_int(EPERM));
	json_object_array_add(arches, json_object_new_string("SCMP_ARCH_X86_64"));
	json_object_array_add(arches, json_object_new_string("SCMP_ARCH_X86"));
	json_object_array_add(arches, json_object_new_string("SCMP_ARCH_X32"));
	json_object_object_add(sc, "architectures", arches);
	all = json_object_new_object();
	json_object_object_add(all, "names", names_of(allowed));
	json_object_object_add(all, "action", json_object_new_string("SCMP_ACT_ALLOW"));
	json_object_array_add(rules, all);
	json_object_array_add(
		rules, rule("socket", "SCMP_ACT_ALLOW", 0, "SCMP_CMP_NE", AF_VSOCK_DOMAIN, 0));
	/* A new namespace would hand the container capabilities over it. */
	json_object_array_add(
		rules, rule("clone", "SCMP_ACT_ALLOW", 0, "SCMP_CMP_MASKED_EQ", CLONE_NS_FLAGS, 0));
	json_object_array_add(rules, rule("clone3", "SCMP_ACT_ERRNO", ENOSYS, NULL, 0, 0));
	for (size_t i = 0; i < ARRAY_SIZE(personalities); i++)
		json_object_array_add(rules, rule("personality", "SCMP_ACT_ALLOW", 0, "SCMP_CMP_EQ",
						  personalities[i], 0));
	json_object_object_add(sc, "syscalls", rules);
	return sc;
}
