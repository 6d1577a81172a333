/* SPDX-License-Identifier: BSD-2-Clause */
/* A strict JSON validator (RFC 8259) for the tests and fuzz targets: the whole input must be one
 * value with optional surrounding whitespace; strings must be valid UTF-8 without raw control
 * characters, with well-formed escapes and paired surrogates; numbers follow the grammar exactly.
 *
 * Why by hand: the check must be strict (a lenient parser would hide the bugs it is here to find)
 * and must take any nesting depth without recursion (a 100,000-deep cause chain is one nested
 * object per error), and no Debian C JSON library promises both. Header-only, for tests only.
 */
#ifndef ATS_TEST_JSON_CHECK_H
#define ATS_TEST_JSON_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline bool json_check__ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline int json_check__hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reads \uXXXX at s[*i] (just past the 'u'); returns the code unit or -1. */
static inline long json_check__u4(const char *s, size_t n, size_t *i)
{
	if (n - *i < 4)
		return -1;
	long v = 0;
	for (int k = 0; k < 4; k++) {
		int h = json_check__hex(s[*i + (size_t)k]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	*i += 4;
	return v;
}

/* A string starting at s[*i] == '"'; leaves *i after the closing quote. */
static inline bool json_check__string(const char *s, size_t n, size_t *i)
{
	const unsigned char *u = (const unsigned char *)s;
	(*i)++;
	while (*i < n) {
		unsigned c = u[*i];
		if (c == '"') {
			(*i)++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			if (++*i >= n)
				return false;
			char e = s[(*i)++];
			if (e == 'u') {
				long cu = json_check__u4(s, n, i);
				if (cu < 0 || (cu >= 0xdc00 && cu <= 0xdfff))
					return false; /* bad escape or a lone low surrogate */
				if (cu >= 0xd800 && cu <= 0xdbff) {
					if (n - *i < 2 || s[*i] != '\\' || s[*i + 1] != 'u')
						return false;
					*i += 2;
					long lo = json_check__u4(s, n, i);
					if (lo < 0xdc00 || lo > 0xdfff)
						return false;
				}
			} else if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' &&
			           e != 't') {
				return false;
			}
			continue;
		}
		if (c < 0x80) {
			(*i)++;
			continue;
		}
		/* UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
		size_t len;
		uint32_t cp;
		if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - *i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((u[*i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (u[*i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		*i += len;
	}
	return false;
}

/* An object member's key and its colon, with the white space around them. */
static inline bool json_check__key(const char *s, size_t n, size_t *i)
{
	while (*i < n && json_check__ws(s[*i]))
		(*i)++;
	if (*i >= n || s[*i] != '"' || !json_check__string(s, n, i))
		return false;
	while (*i < n && json_check__ws(s[*i]))
		(*i)++;
	return *i < n && s[(*i)++] == ':';
}

static inline bool json_check__digits(const char *s, size_t n, size_t *i)
{
	size_t start = *i;
	while (*i < n && s[*i] >= '0' && s[*i] <= '9')
		(*i)++;
	return *i > start;
}

static inline bool json_check__number(const char *s, size_t n, size_t *i)
{
	if (s[*i] == '-')
		(*i)++;
	if (*i < n && s[*i] == '0')
		(*i)++;
	else if (!(*i < n && s[*i] >= '1' && s[*i] <= '9') || !json_check__digits(s, n, i))
		return false;
	if (*i < n && s[*i] == '.') {
		(*i)++;
		if (!json_check__digits(s, n, i))
			return false;
	}
	if (*i < n && (s[*i] == 'e' || s[*i] == 'E')) {
		(*i)++;
		if (*i < n && (s[*i] == '+' || s[*i] == '-'))
			(*i)++;
		if (!json_check__digits(s, n, i))
			return false;
	}
	return true;
}

static inline bool json_check__literal(const char *s, size_t n, size_t *i, const char *lit)
{
	for (; *lit; lit++, (*i)++)
		if (*i >= n || s[*i] != *lit)
			return false;
	return true;
}

/* True when s[0..n) is exactly one valid JSON value. Iterative: any depth, O(depth) memory. */
static inline bool json_valid(const char *s, size_t n)
{
	char *stack = NULL; /* '{' or '[' per open container */
	size_t depth = 0, cap = 0, i = 0;
	bool ok = false;
	for (;;) {
		/* Expecting a value. */
		while (i < n && json_check__ws(s[i]))
			i++;
		if (i >= n)
			goto out;
		char c = s[i];
		if (c == '{' || c == '[') {
			i++;
			while (i < n && json_check__ws(s[i]))
				i++;
			if (i < n && s[i] == (c == '{' ? '}' : ']')) {
				i++; /* empty container: a complete value */
			} else {
				if (depth == cap) {
					cap = cap ? 2 * cap : 64;
					char *grown = realloc(stack, cap);
					if (!grown)
						goto out;
					stack = grown;
				}
				stack[depth++] = c;
				if (c == '{') {
					if (!json_check__key(s, n, &i))
						goto out;
				}
				continue; /* the member's or element's value */
			}
		} else if (c == '"') {
			if (!json_check__string(s, n, &i))
				goto out;
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			if (!json_check__number(s, n, &i))
				goto out;
		} else if (c == 't') {
			if (!json_check__literal(s, n, &i, "true"))
				goto out;
		} else if (c == 'f') {
			if (!json_check__literal(s, n, &i, "false"))
				goto out;
		} else if (c == 'n') {
			if (!json_check__literal(s, n, &i, "null"))
				goto out;
		} else {
			goto out;
		}
		/* After a value: close containers or go on to the next member/element. */
		for (;;) {
			while (i < n && json_check__ws(s[i]))
				i++;
			if (depth == 0) {
				ok = i == n;
				goto out;
			}
			if (i >= n)
				goto out;
			char top = stack[depth - 1];
			if (s[i] == (top == '{' ? '}' : ']')) {
				i++;
				depth--;
				continue;
			}
			if (s[i] != ',')
				goto out;
			i++;
			if (top == '{') {
				if (!json_check__key(s, n, &i))
					goto out;
			}
			break;
		}
	}
out:
	free(stack);
	return ok;
}

#endif
