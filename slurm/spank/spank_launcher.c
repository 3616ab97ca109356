/*
 * spank_launcher.so: pyxis-style container options for srun, run by the launcher.
 *
 *     srun --container-image=IMAGE [--container-mounts=SRC:DST[:ro],...]
 *          [--container-workdir=DIR] [--container-env=NAME,...] [--container-writable]
 *          [--[no-]container-mount-home] COMMAND ARGS...
 *
 * Each task becomes `launcher exec [options] IMAGE COMMAND ARGS...`: in slurm_spank_task_init,
 * which slurmstepd calls in the task's own process, already running as the user, with the
 * task's stdio, working directory and MPI variables in place, the plugin execs the launcher with
 * the task's argv (S_JOB_ARGV) and environment (S_JOB_ENV). No daemon, no privilege: the launcher
 * does what it does under a plain srun, so the tasks of a step on a node share one instance (one
 * FUSE server, one user namespace) through its rendezvous (docs/slurm.md).
 *
 * What slurmstepd does after this hook and before its own execve (Slurm 22.05's exec_task) is
 * therefore not done for a container task: TaskProlog and --task-prolog, the propagation of the
 * submitting shell's resource limits (SLURM_RLIMIT_*, removed here as slurmstepd removes them)
 * and the step's RSS/AS limits, the SELinux context. TMPDIR is made here as slurmstepd makes it.
 * docs/slurm.md lists these.
 *
 * plugstack.conf arguments:
 *     launcher=PATH      the launcher to run (default /usr/bin/launcher)
 *     mount_home=yes|no  the default of --container-mount-home (default yes, as the launcher)
 *
 * `srun --multi-prog` with --container-image is refused by srun in one line (slurmstepd chooses
 * each task's command after the hook: is_multi_prog below).
 *
 * Errors: a bad option value is refused by srun before anything starts, in one line; a launcher
 * that cannot be started fails the task with one line (slurm_error) and a non-zero status; the
 * launcher reports its own errors (a missing image) in one line and fails the task. A task never
 * falls back to running on the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(launcher, 1);

#define PREFIX "launcher-spank: "

enum opt_val {
	OPT_IMAGE = 1,
	OPT_MOUNTS,
	OPT_WORKDIR,
	OPT_ENV,
	OPT_WRITABLE,
	OPT_READONLY,
	OPT_MOUNT_HOME,
	OPT_NO_MOUNT_HOME,
};

/* The options as given (in srun, then again in slurmstepd from what srun passed on). */
static char *opt_image;
static char *opt_mounts;  /* pyxis syntax; turned into --bind specs in task_init */
static char *opt_workdir;
static char *opt_env;     /* NAME,NAME,... */
static int opt_writable;
static int opt_mount_home = -1; /* -1: the plugstack.conf default */

/* plugstack.conf arguments. */
static const char *launcher_path = "/usr/bin/launcher";
static int default_mount_home = 1;

static int opt_cb(int val, const char *optarg, int remote);

static struct spank_option options[] = {
	{"container-image", "IMAGE",
	 "[launcher] run each task in this image: a .sif or .sqfs file, a sandbox directory, "
	 "or docker://REF",
	 1, OPT_IMAGE, opt_cb},
	{"container-mounts", "SRC:DST[:ro|rw][,...]",
	 "[launcher] bind host paths into the container (DST defaults to SRC)", 1, OPT_MOUNTS, opt_cb},
	{"container-workdir", "DIR", "[launcher] working directory inside the container", 1,
	 OPT_WORKDIR, opt_cb},
	{"container-env", "NAME[,NAME...]",
	 "[launcher] these host variables override the image's", 1, OPT_ENV, opt_cb},
	{"container-writable", NULL,
	 "[launcher] a writable tmpfs layer over the image (changes vanish at exit)", 0,
	 OPT_WRITABLE, opt_cb},
	{"container-readonly", NULL, "[launcher] the image read-only (the default)", 0,
	 OPT_READONLY, opt_cb},
	{"container-mount-home", NULL, "[launcher] bind the home directory", 0, OPT_MOUNT_HOME,
	 opt_cb},
	{"no-container-mount-home", NULL, "[launcher] do not bind the home directory", 0,
	 OPT_NO_MOUNT_HOME, opt_cb},
	SPANK_OPTIONS_TABLE_END};

/* One mount of --container-mounts: SRC[:DST[:FLAGS]], FLAGS "ro" or "rw" (pyxis joins flags
 * with '+'; only these two mean something here). Writes the launcher's --bind spec to *spec
 * (malloc'd) or a reason to *why. */
static int mount_spec(const char *item, char **spec, const char **why)
{
	char *copy = strdup(item), *src, *dst, *flags, *rest;
	const char *mode = NULL;
	int rc = -1;

	*spec = NULL;
	if (!copy) {
		*why = "out of memory";
		return -1;
	}
	src = copy;
	dst = strchr(src, ':');
	flags = NULL;
	if (dst) {
		*dst++ = '\0';
		flags = strchr(dst, ':');
		if (flags) {
			*flags++ = '\0';
			if (strchr(flags, ':')) {
				*why = "more than three ':'-separated fields";
				goto out;
			}
		}
	}
	if (!*src || src[0] != '/') {
		*why = "the source must be an absolute path";
		goto out;
	}
	if (dst && (!*dst || dst[0] != '/')) {
		*why = "the destination must be an absolute path";
		goto out;
	}
	if (flags) {
		for (char *f = strtok_r(flags, "+", &rest); f; f = strtok_r(NULL, "+", &rest)) {
			if (!strcmp(f, "ro") || !strcmp(f, "rw")) {
				mode = f;
			} else {
				*why = "unknown flag (ro or rw)";
				goto out;
			}
		}
	}
	if (asprintf(spec, "%s:%s%s%s", src, dst ? dst : src, mode ? ":" : "", mode ? mode : "") < 0) {
		*spec = NULL;
		*why = "out of memory";
		goto out;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

/* Calls fn(item, arg) for each non-empty comma-separated item of list; stops at the first
 * non-zero return and returns it. */
static int each_item(const char *list, int (*fn)(const char *, void *), void *arg)
{
	char *copy = strdup(list), *rest, *item;
	int rc = 0;

	if (!copy)
		return -1;
	for (item = strtok_r(copy, ",", &rest); item && !rc; item = strtok_r(NULL, ",", &rest))
		rc = fn(item, arg);
	free(copy);
	return rc;
}

static int check_mount(const char *item, void *unused)
{
	char *spec;
	const char *why = NULL;

	(void)unused;
	if (mount_spec(item, &spec, &why)) {
		slurm_error(PREFIX "--container-mounts: '%s': %s", item, why);
		return -1;
	}
	free(spec);
	return 0;
}

static int valid_name(const char *name)
{
	if (!*name || (name[0] >= '0' && name[0] <= '9'))
		return 0;
	for (const char *c = name; *c; c++)
		if (!(*c == '_' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9')))
			return 0;
	return 1;
}

static int check_env_name(const char *item, void *unused)
{
	(void)unused;
	if (!valid_name(item)) {
		slurm_error(PREFIX "--container-env: '%s' is not a variable name", item);
		return -1;
	}
	return 0;
}

static int set_string(char **slot, const char *optarg, const char *name)
{
	if (!optarg || !*optarg) {
		slurm_error(PREFIX "--%s needs a value", name);
		return -1;
	}
	free(*slot);
	*slot = strdup(optarg);
	return *slot ? 0 : -1;
}

static int opt_cb(int val, const char *optarg, int remote)
{
	(void)remote;
	switch (val) {
	case OPT_IMAGE:
		return set_string(&opt_image, optarg, "container-image");
	case OPT_MOUNTS:
		if (set_string(&opt_mounts, optarg, "container-mounts"))
			return -1;
		return each_item(opt_mounts, check_mount, NULL);
	case OPT_WORKDIR:
		if (set_string(&opt_workdir, optarg, "container-workdir"))
			return -1;
		if (opt_workdir[0] != '/') {
			slurm_error(PREFIX "--container-workdir: '%s' is not an absolute path", optarg);
			return -1;
		}
		return 0;
	case OPT_ENV:
		if (set_string(&opt_env, optarg, "container-env"))
			return -1;
		return each_item(opt_env, check_env_name, NULL);
	case OPT_WRITABLE:
		opt_writable = 1;
		return 0;
	case OPT_READONLY:
		opt_writable = 0;
		return 0;
	case OPT_MOUNT_HOME:
		opt_mount_home = 1;
		return 0;
	case OPT_NO_MOUNT_HOME:
		opt_mount_home = 0;
		return 0;
	}
	return -1;
}

static int plugin_args(int ac, char **av)
{
	for (int i = 0; i < ac; i++) {
		if (!strncmp(av[i], "launcher=", 9) && av[i][9] == '/') {
			launcher_path = av[i] + 9;
		} else if (!strcmp(av[i], "mount_home=yes")) {
			default_mount_home = 1;
		} else if (!strcmp(av[i], "mount_home=no")) {
			default_mount_home = 0;
		} else {
			slurm_error(PREFIX "plugstack.conf: unknown argument '%s' (launcher=/PATH, "
				    "mount_home=yes|no)",
				    av[i]);
			return -1;
		}
	}
	return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();

	if (plugin_args(ac, av))
		return -1;
	/* srun and the step daemons only: sbatch and salloc do not know the options (a batch
	 * script's srun lines carry them), so `sbatch --container-image` is an unknown option. */
	if (ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE)
		return 0;
	for (struct spank_option *o = options; o->name; o++) {
		if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
			slurm_error(PREFIX "cannot register --%s", o->name);
			return -1;
		}
	}
	return 0;
}

/* A growing NULL-terminated string array. */
struct strv {
	char **v;
	size_t n, cap;
};

static int strv_push(struct strv *s, char *str)
{
	if (!str)
		return -1;
	if (s->n + 2 > s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 32;
		char **v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return -1;
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = str;
	s->v[s->n] = NULL;
	return 0;
}

static int push_bind(const char *item, void *argv)
{
	char *spec;
	const char *why;

	if (mount_spec(item, &spec, &why))
		return -1; /* checked when the option was given */
	if (strv_push(argv, strdup("--bind")) || strv_push(argv, spec))
		return -1;
	return 0;
}

static const char *env_get(char **env, const char *name)
{
	size_t len = strlen(name);

	for (char **e = env; e && *e; e++)
		if (!strncmp(*e, name, len) && (*e)[len] == '=')
			return *e + len + 1;
	return NULL;
}

struct env_edit {
	char **task_env;
	struct strv *out;
};

/* --container-env NAME: the task's value as LAUNCHERENV_NAME, which wins over the image's
 * environment (docs/environment.md); a NAME the task does not have is left alone. */
static int push_override(const char *name, void *arg)
{
	struct env_edit *edit = arg;
	const char *value = env_get(edit->task_env, name);
	char *entry;

	if (!value)
		return 0;
	if (asprintf(&entry, "LAUNCHERENV_%s=%s", name, value) < 0)
		return -1;
	return strv_push(edit->out, entry);
}

/* TMPDIR as slurmstepd sets it after this hook: made if missing, /tmp when unset or unusable. */
static const char *task_tmpdir(char **env)
{
	const char *tmpdir = env_get(env, "TMPDIR");
	struct stat st;

	if (!tmpdir)
		return "/tmp";
	if (mkdir(tmpdir, 0700) == 0)
		return tmpdir;
	if (stat(tmpdir, &st) == 0 && S_ISDIR(st.st_mode) &&
	    faccessat(AT_FDCWD, tmpdir, X_OK | W_OK, AT_EACCESS) == 0)
		return tmpdir;
	slurm_error(PREFIX "TMPDIR '%s' cannot be made or written; setting TMPDIR to /tmp", tmpdir);
	return "/tmp";
}

/*
 * Whether the step is `srun --multi-prog FILE`. Slurm 22.05 has no SPANK item or variable for
 * it: srun replaces the step's argv with {FILE, FILE's contents} (S_JOB_ARGV, seen in srun's
 * local_user_init and in each task), and slurmstepd derives each task's command from the
 * contents after this plugin's hook. So: two arguments, the second exactly the contents of
 * the file the first names (relative to the working directory, srun's and by default the
 * task's). A plain `srun PROG ARG` matches only if ARG is PROG's whole text.
 */
static int is_multi_prog(int argc, char **argv)
{
	size_t want, got = 0;
	char buf[4096];
	ssize_t n;
	int fd, same = 1;

	if (argc != 2 || !argv[0] || !argv[1])
		return 0;
	want = strlen(argv[1]);
	fd = open(argv[0], O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return 0;
	while (same && (n = read(fd, buf, sizeof(buf))) > 0) {
		if (got + (size_t)n > want || memcmp(buf, argv[1] + got, (size_t)n))
			same = 0;
		got += (size_t)n;
	}
	close(fd);
	return same && n == 0 && got == want;
}

static int refuse_multi_prog(spank_t sp)
{
	int argc = 0;
	char **argv = NULL;

	if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS ||
	    !is_multi_prog(argc, argv))
		return 0;
	slurm_error(PREFIX "--container-image cannot be used with --multi-prog (each task's "
		    "command is chosen by slurmstepd after the plugin runs); run one srun per "
		    "program, or `--multi-prog` with `launcher exec IMAGE ...` in the file");
	return -1;
}

/* In srun, once the step's argv is known and before any task starts: refuse --multi-prog. */
int slurm_spank_local_user_init(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (!opt_image)
		return 0;
	return refuse_multi_prog(sp);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	struct strv argv = {0}, env = {0};
	int task_argc = 0, home;
	char **task_argv = NULL, **task_env = NULL;
	uint32_t step = 0;
	char *tmpdir_entry;

	(void)ac;
	(void)av;
	if (!opt_image || !spank_remote(sp))
		return 0;
	if (spank_get_item(sp, S_JOB_STEPID, &step) == ESPANK_SUCCESS &&
	    (step == SLURM_BATCH_SCRIPT || step == SLURM_EXTERN_CONT || step == SLURM_INTERACTIVE_STEP))
		return 0;
	if (spank_get_item(sp, S_JOB_ARGV, &task_argc, &task_argv) != ESPANK_SUCCESS ||
	    task_argc < 1 || !task_argv || !task_argv[0]) {
		slurm_error(PREFIX "--container-image: the task has no command to run");
		return -1;
	}
	/* Again in the task: should srun not have refused (another srun), the file must not
	 * become the command. */
	if (refuse_multi_prog(sp))
		return -1;
	if (spank_get_item(sp, S_JOB_ENV, &task_env) != ESPANK_SUCCESS || !task_env) {
		slurm_error(PREFIX "cannot read the task's environment");
		return -1;
	}

	home = opt_mount_home >= 0 ? opt_mount_home : default_mount_home;
	if (strv_push(&argv, strdup(launcher_path)) || strv_push(&argv, strdup("exec")))
		goto oom;
	if (!home && strv_push(&argv, strdup("--no-home")))
		goto oom;
	if (opt_writable && strv_push(&argv, strdup("--writable-tmpfs")))
		goto oom;
	if (opt_workdir && (strv_push(&argv, strdup("--pwd")) || strv_push(&argv, strdup(opt_workdir))))
		goto oom;
	if (opt_mounts && each_item(opt_mounts, push_bind, &argv))
		goto oom;
	if (strv_push(&argv, strdup(opt_image)))
		goto oom;
	for (int i = 0; i < task_argc; i++)
		if (strv_push(&argv, strdup(task_argv[i])))
			goto oom;

	/* The task's environment, less what slurmstepd removes before its execve (the submitting
	 * shell's limits), with TMPDIR as it sets it, and the --container-env overrides. */
	for (char **e = task_env; *e; e++) {
		if (!strncmp(*e, "SLURM_RLIMIT_", 13) || !strncmp(*e, "TMPDIR=", 7))
			continue;
		if (strv_push(&env, strdup(*e)))
			goto oom;
	}
	if (asprintf(&tmpdir_entry, "TMPDIR=%s", task_tmpdir(task_env)) < 0 ||
	    strv_push(&env, tmpdir_entry))
		goto oom;
	if (opt_env) {
		struct env_edit edit = {task_env, &env};
		if (each_item(opt_env, push_override, &edit))
			goto oom;
	}

	execve(launcher_path, argv.v, env.v);
	slurm_error(PREFIX "cannot start the launcher '%s' (plugstack.conf launcher=): %s",
		    launcher_path, strerror(errno));
	return -1;
oom:
	slurm_error(PREFIX "out of memory building the launcher's command line");
	return -1;
}
