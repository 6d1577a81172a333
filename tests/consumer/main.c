/* Built outside the tree against the installed atscale, with pkg-config and with CMake. */
#include <atscale/atscale.h>

#include <stdio.h>
#include <string.h>

/* Not static: with -rdynamic it is in the dynamic symbol table, which is what names a frame. */
__attribute__((noinline)) ats_err *consumer_frame(void)
{
	return ats_err_new_stack(ATS_ERR_LIMITED, "consumer frame");
}

int main(void)
{
	ats_err *err = ats_err_new(ATS_ERR_LIMITED, "consumer %d", 42);
	int ok = ats_err_is(err, ATS_ERR_LIMITED) && ats_now_ns() > 0;
	ats_err_unref(err);
#ifdef CONSUMER_EXPECTS_NAMES
	err = consumer_frame();
	char text[4096];
	ats_err_format(err, text, sizeof text);
	if (!strstr(text, "consumer_frame+0x")) {
		printf("consumer: no symbol name for the program's own frame:\n%s", text);
		ok = 0;
	}
	ats_err_unref(err);
#endif
	printf("consumer: %s\n", ok ? "ok" : "FAILED");
	return ok ? 0 : 1;
}
