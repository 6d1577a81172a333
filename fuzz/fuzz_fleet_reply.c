/* SPDX-License-Identifier: BSD-2-Clause */
/* Fuzz target for the fleet limiter's reply parser (ats__fleet_parse_reply): arbitrary bytes go
 * through hiredis's own RESP reader (the parser the limiter's connection uses), and every reply it
 * produces goes to the parser with an arbitrary `asked`. The parser must never crash, never grant
 * more than asked, grant nothing on error, and accept only the script's shape. Input: 4 bytes of
 * asked (little-endian), then RESP bytes.
 *
 *   build/fuzz/fuzz/fuzz_fleet_reply -max_total_time=600 fuzz/corpus/fuzz_fleet_reply
 */
#include "atscale/fleet.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const redisReply *r, uint64_t asked)
{
	ats__fleet_reply out;
	memset(&out, 0xA5, sizeof out);
	ats_err *err = ats__fleet_parse_reply(r, asked, &out);
	bool shape = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element && r->element[0] &&
	             r->element[1] && r->element[0]->type == REDIS_REPLY_INTEGER &&
	             r->element[1]->type == REDIS_REPLY_INTEGER && r->element[0]->integer >= 0 &&
	             (unsigned long long)r->element[0]->integer <= asked && r->element[1]->integer >= 0 &&
	             r->element[1]->integer <= (1LL << 53);
	if (err) {
		if (out.granted != 0 || shape || ats_err_code(err) != ATS_ERR_UNAVAILABLE)
			abort();
		char buf[512];
		ats_err_format(err, buf, sizeof buf); /* the attached text must format */
		ats_err_unref(err);
	} else {
		if (!shape || out.granted > asked || out.granted != (uint64_t)r->element[0]->integer || out.noscript)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	/* hiredis 0.14 allocates an aggregate's element array as soon as it reads the count (it has no
	 * maxelements): aggregate counts of 5+ digits only measure calloc, so they are left out. */
	for (size_t i = 4; i < size; i++) {
		if (data[i] != '*' && data[i] != '%' && data[i] != '~' && data[i] != '>' && data[i] != '|')
			continue;
		size_t digits = 0;
		while (i + 1 < size && data[i + 1] >= '0' && data[i + 1] <= '9' && digits <= 4) {
			i++;
			digits++;
		}
		if (digits > 4)
			return 0;
	}
	uint64_t asked = (uint64_t)data[0] | (uint64_t)data[1] << 8 | (uint64_t)data[2] << 16 | (uint64_t)data[3] << 24;
	redisReader *rd = redisReaderCreate();
	if (!rd)
		return 0;
	if (redisReaderFeed(rd, (const char *)data + 4, size - 4) == REDIS_OK) {
		for (int i = 0; i < 64; i++) {
			void *reply = NULL;
			if (redisReaderGetReply(rd, &reply) != REDIS_OK || !reply)
				break;
			check(reply, asked);
			/* a nested element on its own: replies need not come from the script */
			const redisReply *r = reply;
			if (r->type == REDIS_REPLY_ARRAY)
				for (size_t j = 0; j < r->elements && j < 4; j++)
					check(r->element[j], asked);
			freeReplyObject(reply);
		}
	}
	check(NULL, asked);
	redisReaderFree(rd);
	return 0;
}
