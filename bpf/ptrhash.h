/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef HOPTRACE_PTRHASH_H
#define HOPTRACE_PTRHASH_H

/*
 * A 32-bit hash of a kernel pointer (an skb's address), for the index of an
 * array table. It is taken from the pointer's low half, copied by a 32-bit
 * move: the verifier refuses any other arithmetic on a kernel pointer, and
 * lets a program with CAP_PERFMON copy part of one. The high half of a
 * kernel address is nearly constant anyway. Fibonacci hashing: the
 * product's high half depends on every input bit.
 */
static __always_inline __u32 ptr_hash(__u64 ptr)
{
	__u64 lo;
	asm volatile("r1 = %[p]\n\tw1 = w1\n\t%[lo] = r1" : [lo] "=r"(lo) : [p] "r"(ptr) : "r1");
	return (__u32)((lo * 0x9E3779B97F4A7C15ULL) >> 32);
}

#endif
