/*
 * jobfile.c - {run dir}/job.json read again at start-up: the cancel (or passed
 * deadline) of a create that a previous run of the agent heard but died before it
 * undid (job.c writes the file and tells the whole story). The decision is pure, so it
 * is tested without an agent (tests/unit/test_jobfile.c); what is undone then is the
 * driver's (its cancel slot, through instance_undo_resume()).
 */
#include "agentd.h"

#include <unistd.h>

#include "util.h"

/*
 * Decide from job.json's text (len bytes) at time now (ms since the epoch) whether a
 * create is left to undo: a valid op id, the verb create, and a cancel, or a deadline
 * that passed while no agent ran (a cancel as well: "timed out"). Fills jf either way
 * (empty fields when absent) and returns true when there is an undo to finish.
 */
bool job_file_parse(const char *text, size_t len, int64_t now, struct job_file *jf)
{
	struct json_object *o = NULL;
	struct kerr err;
	int64_t deadline;
	bool undo;

	memset(jf, 0, sizeof(*jf));
	if (json_body_parse(text, len, &o, &err) < 0)
		return false;
	snprintf(jf->op, sizeof(jf->op), "%s", json_get_str(o, "op", ""));
	snprintf(jf->verb, sizeof(jf->verb), "%s", json_get_str(o, "verb", ""));
	snprintf(jf->cancel, sizeof(jf->cancel), "%s", json_get_str(o, "cancel", ""));
	if (strcmp(jf->cancel, "cancelled") != 0 && strcmp(jf->cancel, "timed out") != 0)
		jf->cancel[0] = '\0';
	deadline = json_get_int(o, "deadline_ms", 0);
	if (jf->cancel[0] == '\0' && deadline > 0 && deadline <= now)
		snprintf(jf->cancel, sizeof(jf->cancel), "timed out");
	/* Only a create is undone whole; another verb's cancel needs nothing at start-up
	 * (the instance is adopted as it is, and the controller's deadline ends the op). */
	undo = link_op_id_valid(jf->op) && jf->cancel[0] && strcmp(jf->verb, "create") == 0;
	json_object_put(o);
	return undo;
}

/*
 * At start-up: read and remove {dir}/job.json. Returns job_file_parse()'s answer
 * (false when there is no file), with jf filled.
 */
bool job_file_take(const char *dir, struct job_file *jf)
{
	_cleanup_free_ char *path = xasprintf("%s/job.json", dir), *text = NULL;
	size_t len;

	memset(jf, 0, sizeof(*jf));
	if (file_read_all(path, 4096, &text, &len) < 0)
		return false;
	unlink(path);
	return job_file_parse(text, len, now_ms(), jf);
}
