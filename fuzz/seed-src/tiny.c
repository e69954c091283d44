/* Source of the unwind_elf seeds in fuzz/corpus/unwind_elf (x86-64, gcc 12):
 *   tiny_static:    gcc -O1 -fno-omit-frame-pointer -fasynchronous-unwind-tables -nostdlib -static \
 *                       -Wl,--build-id=none -Wl,-n -s -o tiny_static tiny.c
 *   tiny_shared.so: gcc -O2 -fomit-frame-pointer -fasynchronous-unwind-tables -nostdlib -shared -fPIC \
 *                       -Wl,--build-id=none -Wl,-z,noseparate-code -Wl,-z,max-page-size=0x10 -s \
 *                       -o tiny_shared.so tiny.c
 * The first is an ET_EXEC with .text and .eh_frame only (rbp-based CFA rows); the second an
 * ET_DYN with .plt (a DWARF-expression FDE), .eh_frame_hdr and .got.plt (rsp-based rows). */
__attribute__((noinline)) static long leaf(long x) { return x * 3 + 1; }
__attribute__((noinline)) static long framed(long x) {
    volatile long buf[8];
    for (int i = 0; i < 8; i++) buf[i] = leaf(x + i);
    return buf[x & 7];
}
__attribute__((noinline)) long pushes(long a, long b, long c) {
    long r = 0;
    for (long i = 0; i < a; i++) r += framed(i) * b - c;
    return r;
}
void _start(void) {
    long r = pushes(3, 4, 5);
    __asm__ volatile("mov $60, %%eax; mov %0, %%rdi; syscall" :: "r"(r) : "rax", "rdi");
    __builtin_unreachable();
}
