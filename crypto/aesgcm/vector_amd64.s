// AES-GCM's counter mode and GHASH on AVX-512 with VAES and VPCLMULQDQ,
// 16 blocks (four zmm registers) per step; the bytes after the last whole
// step are done with byte-masked loads and stores, not a scalar loop. See
// vector_amd64.go for the Go side and keys.go for the key formats.

#include "textflag.h"

// bswap reverses the 16 bytes of a 128-bit lane (VPSHUFB); loaded into
// every lane.
DATA bswap<>+0x00(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+0x08(SB)/8, $0x0001020304050607
GLOBL bswap<>(SB), RODATA|NOPTR, $16

// poly folds 64 bits of a product into the next 128 (see gcmTag).
DATA poly<>+0x00(SB)/8, $0xc200000000000000
DATA poly<>+0x08(SB)/8, $0xc200000000000000
GLOBL poly<>(SB), RODATA|NOPTR, $16

// laneoff adds 0, 1, 2, 3 to the byte-reversed counters of the lanes.
DATA laneoff<>+0x00(SB)/8, $0
DATA laneoff<>+0x08(SB)/8, $0
DATA laneoff<>+0x10(SB)/8, $1
DATA laneoff<>+0x18(SB)/8, $0
DATA laneoff<>+0x20(SB)/8, $2
DATA laneoff<>+0x28(SB)/8, $0
DATA laneoff<>+0x30(SB)/8, $3
DATA laneoff<>+0x38(SB)/8, $0
GLOBL laneoff<>(SB), RODATA|NOPTR, $64

// four advances a lane's counter by four blocks; loaded into every lane.
DATA four<>+0x00(SB)/8, $4
DATA four<>+0x08(SB)/8, $0
GLOBL four<>(SB), RODATA|NOPTR, $16

// STEPMASKS sets K1..K4 to the bytes of the next step of a buffer with CX
// bytes left (CX > 0): all of 256 bytes, or the first CX < 256 of them.
// R10 becomes the step's length; AX is clobbered; R11 must be -1 and R12
// 0. In the partial case, R9 is set to DX + 256 - CX rounded up to whole
// blocks (GHASH's first power for the step); in the full case to DX.
#define STEPMASKS(done) \
	CMPQ    CX, $256 \
	JB      partial \
	KXNORQ  K1, K1, K1 \
	KXNORQ  K2, K2, K2 \
	KXNORQ  K3, K3, K3 \
	KXNORQ  K4, K4, K4 \
	MOVQ    DX, R9 \
	MOVQ    $256, R10 \
	JMP     done \
partial: \
	MOVQ    CX, R10 \
	BZHIQ   CX, R11, AX \
	KMOVQ   AX, K1 \
	LEAQ    -64(CX), AX \
	TESTQ   AX, AX \
	CMOVQLT R12, AX \
	BZHIQ   AX, R11, AX \
	KMOVQ   AX, K2 \
	LEAQ    -128(CX), AX \
	TESTQ   AX, AX \
	CMOVQLT R12, AX \
	BZHIQ   AX, R11, AX \
	KMOVQ   AX, K3 \
	LEAQ    -192(CX), AX \
	TESTQ   AX, AX \
	CMOVQLT R12, AX \
	BZHIQ   AX, R11, AX \
	KMOVQ   AX, K4 \
	LEAQ    15(CX), AX \
	ANDQ    $-16, AX \
	LEAQ    256(DX), R9 \
	SUBQ    AX, R9

#define ROUND(k) \
	VAESENC k, Z1, Z1 \
	VAESENC k, Z2, Z2 \
	VAESENC k, Z3, Z3 \
	VAESENC k, Z4, Z4

#define LASTROUND(k) \
	VAESENCLAST k, Z1, Z1 \
	VAESENCLAST k, Z2, Z2 \
	VAESENCLAST k, Z3, Z3 \
	VAESENCLAST k, Z4, Z4

// func ctrXOR(rk *[15 * 16]byte, rounds int, ivLo, ivHi uint64, dst, src []byte)
TEXT ·ctrXOR(SB), NOSPLIT, $0-80
	MOVQ  rk+0(FP), DX
	MOVQ  rounds+8(FP), R8
	MOVQ  dst_base+32(FP), DI
	MOVQ  src_base+56(FP), SI
	MOVQ  src_len+64(FP), CX
	TESTQ CX, CX
	JZ    ctrnone

	VBROADCASTI32X4 bswap<>(SB), Z31
	MOVQ            ivLo+16(FP), AX
	VMOVQ           AX, X15
	MOVQ            ivHi+24(FP), AX
	VPINSRQ         $1, AX, X15, X15
	VSHUFI64X2      $0, Z15, Z15, Z15
	VPSHUFB         Z31, Z15, Z15
	VPADDD          laneoff<>(SB), Z15, Z15
	VBROADCASTI32X4 four<>(SB), Z14
	VBROADCASTI32X4 0(DX), Z16
	VBROADCASTI32X4 16(DX), Z17
	VBROADCASTI32X4 32(DX), Z18
	VBROADCASTI32X4 48(DX), Z19
	VBROADCASTI32X4 64(DX), Z20
	VBROADCASTI32X4 80(DX), Z21
	VBROADCASTI32X4 96(DX), Z22
	VBROADCASTI32X4 112(DX), Z23
	VBROADCASTI32X4 128(DX), Z24
	VBROADCASTI32X4 144(DX), Z25
	VBROADCASTI32X4 160(DX), Z26
	VBROADCASTI32X4 176(DX), Z27
	VBROADCASTI32X4 192(DX), Z28
	VBROADCASTI32X4 208(DX), Z29
	VBROADCASTI32X4 224(DX), Z30
	MOVQ            $-1, R11

	CMPQ CX, $256
	JB   ctrtail

ctrloop:
	// Four counter blocks per register, back in big-endian order.
	VPSHUFB Z31, Z15, Z1
	VPADDD  Z14, Z15, Z15
	VPSHUFB Z31, Z15, Z2
	VPADDD  Z14, Z15, Z15
	VPSHUFB Z31, Z15, Z3
	VPADDD  Z14, Z15, Z15
	VPSHUFB Z31, Z15, Z4
	VPADDD  Z14, Z15, Z15

	VPXORQ Z16, Z1, Z1
	VPXORQ Z16, Z2, Z2
	VPXORQ Z16, Z3, Z3
	VPXORQ Z16, Z4, Z4
	ROUND(Z17)
	ROUND(Z18)
	ROUND(Z19)
	ROUND(Z20)
	ROUND(Z21)
	ROUND(Z22)
	ROUND(Z23)
	ROUND(Z24)
	ROUND(Z25)
	CMPQ R8, $10
	JEQ  ctrlast10
	ROUND(Z26)
	ROUND(Z27)
	ROUND(Z28)
	ROUND(Z29)
	LASTROUND(Z30)
	JMP  ctrxor

ctrlast10:
	LASTROUND(Z26)

ctrxor:
	VPXORQ (SI), Z1, Z1
	VPXORQ 64(SI), Z2, Z2
	VPXORQ 128(SI), Z3, Z3
	VPXORQ 192(SI), Z4, Z4
	VMOVDQU64 Z1, (DI)
	VMOVDQU64 Z2, 64(DI)
	VMOVDQU64 Z3, 128(DI)
	VMOVDQU64 Z4, 192(DI)
	ADDQ      $256, SI
	ADDQ      $256, DI
	SUBQ      $256, CX
	CMPQ      CX, $256
	JAE       ctrloop

ctrtail:
	// Under 256 bytes left: one register (four blocks) at a time, the
	// last one masked to the bytes that are left.
	TESTQ CX, CX
	JZ    ctrdone

ctrtailloop:
	BZHIQ   CX, R11, AX
	KMOVQ   AX, K1
	VPSHUFB Z31, Z15, Z1
	VPADDD  Z14, Z15, Z15
	VPXORQ  Z16, Z1, Z1
	VAESENC Z17, Z1, Z1
	VAESENC Z18, Z1, Z1
	VAESENC Z19, Z1, Z1
	VAESENC Z20, Z1, Z1
	VAESENC Z21, Z1, Z1
	VAESENC Z22, Z1, Z1
	VAESENC Z23, Z1, Z1
	VAESENC Z24, Z1, Z1
	VAESENC Z25, Z1, Z1
	CMPQ    R8, $10
	JEQ     ctrtail10
	VAESENC Z26, Z1, Z1
	VAESENC Z27, Z1, Z1
	VAESENC Z28, Z1, Z1
	VAESENC Z29, Z1, Z1
	VAESENCLAST Z30, Z1, Z1
	JMP     ctrtailxor

ctrtail10:
	VAESENCLAST Z26, Z1, Z1

ctrtailxor:
	VMOVDQU8.Z (SI), K1, Z5
	VPXORQ     Z5, Z1, Z1
	VMOVDQU8   Z1, K1, (DI)
	ADDQ       $64, SI
	ADDQ       $64, DI
	SUBQ       $64, CX
	JG         ctrtailloop

ctrdone:
	VZEROUPPER

ctrnone:
	RET

// MUL4(d, h, lo, hi, mid, t0, t1, t2, t3) adds the 256-bit carry-less
// products of the four blocks of d and the four powers of h into lo, hi
// and mid (the cross terms).
#define MUL4(d, h, lo, hi, mid, t0, t1, t2, t3) \
	VPCLMULQDQ $0x00, h, d, t0 \
	VPCLMULQDQ $0x11, h, d, t1 \
	VPCLMULQDQ $0x01, h, d, t2 \
	VPCLMULQDQ $0x10, h, d, t3 \
	VPXORQ     t0, lo, lo \
	VPXORQ     t1, hi, hi \
	VPTERNLOGD $0x96, t2, t3, mid

// REDUCE reduces the 256-bit product (lo X10, hi X11) to X0 (see gcmTag).
#define REDUCE \
	VPCLMULQDQ $0x00, X29, X10, X12 \
	VPSHUFD    $0x4e, X10, X10 \
	VPXORQ     X12, X10, X10 \
	VPCLMULQDQ $0x00, X29, X10, X12 \
	VPSHUFD    $0x4e, X10, X10 \
	VPTERNLOGD $0x96, X12, X10, X11 \
	VMOVDQA64  X11, X0

// GROUP(off, k, d, h) adds the products of the blocks at off(SI) (masked
// by k, byte-reversed into d) and the powers at off(R9) (into h) to the
// step's sums Z10, Z11 and Z12.
#define GROUP(off, k, d, h) \
	VMOVDQU8.Z off(SI), k, d \
	VPSHUFB    Z31, d, d \
	VMOVDQU64  off(R9), h \
	MUL4(d, h, Z10, Z11, Z12, Z13, Z14, Z15, Z16)

// MULH1 adds the block X1 (byte-reversed) to the hash X0 and multiplies
// the sum by H^1 (the table's entry 15), reduced.
#define MULH1 \
	VPXORQ     X1, X0, X0 \
	VMOVDQU64  240(DX), X5 \
	VPCLMULQDQ $0x00, X5, X0, X10 \
	VPCLMULQDQ $0x11, X5, X0, X11 \
	VPCLMULQDQ $0x01, X5, X0, X12 \
	VPCLMULQDQ $0x10, X5, X0, X13 \
	VPXORQ     X13, X12, X12 \
	VPSRLDQ    $8, X12, X13 \
	VPSLLDQ    $8, X12, X12 \
	VPXORQ     X12, X10, X10 \
	VPXORQ     X13, X11, X11 \
	REDUCE

// func gcmTag(tab *[32 * 16]byte, rk *[15 * 16]byte, rounds int, j0Lo, j0Hi, aadLo, aadHi uint64, aadLen int, aad, ct []byte, tag *[16]byte)
//
// GHASH of the AAD, ct (each zero-padded to whole blocks) and the length
// block, XORed with the encryption of the counter block j0 (the
// little-endian words j0Lo and j0Hi). The AAD is the block aadLo, aadHi
// holding its first aadLen bytes if aadLen > 0 (then aad is empty), or
// aad: so a short AAD and the counter block come in registers, not loaded
// back from the bytes the caller has just stored (see vector_amd64.go).
//
// A block is multiplied in its byte-reversed form (bit 127 of the integer
// is the coefficient of x^0) by a power of H that the table holds times
// x^-1, so the 256-bit carry-less product is the field product's 256-bit
// form with x^0 at bit 255. A step's products (up to 16 blocks, block i
// of r times H^(r-i)) are summed unreduced and reduced once: the low 64
// bits L0 are folded in as L0 * x^128 = L0 * (x^7+x^2+x+1), which poly
// (with its implied bit 64) spreads over the next 128 bits; then the next
// 64 the same way, leaving the result in the high 128 bits.
TEXT ·gcmTag(SB), NOSPLIT, $0-120
	MOVQ tab+0(FP), DX
	MOVQ $2, R13

	VBROADCASTI32X4 bswap<>(SB), Z31
	VMOVDQU64 poly<>(SB), X29
	VPXORQ    X0, X0, X0
	MOVQ      $-1, R11
	XORQ      R12, R12

	MOVQ    aadLen+56(FP), AX
	TESTQ   AX, AX
	JZ      ghaad
	MOVQ    aadLo+40(FP), AX
	VMOVQ   AX, X1
	MOVQ    aadHi+48(FP), AX
	VPINSRQ $1, AX, X1, X1
	VPSHUFB X31, X1, X1
	MULH1

ghaad:
	MOVQ aad_base+64(FP), SI
	MOVQ aad_len+72(FP), CX

ghseg:
	TESTQ CX, CX
	JZ    ghsegdone

ghloop:
	STEPMASKS(ghbody)

ghbody:
	VMOVDQU8.Z (SI), K1, Z1
	VPSHUFB    Z31, Z1, Z1
	VPXORQ     Z0, Z1, Z1
	VMOVDQU64  (R9), Z5
	VPCLMULQDQ $0x00, Z5, Z1, Z10
	VPCLMULQDQ $0x11, Z5, Z1, Z11
	VPCLMULQDQ $0x01, Z5, Z1, Z12
	VPCLMULQDQ $0x10, Z5, Z1, Z13
	VPXORQ     Z13, Z12, Z12
	CMPQ       R10, $64
	JBE        ghfold
	GROUP(64, K2, Z2, Z6)
	CMPQ       R10, $128
	JBE        ghfold
	GROUP(128, K3, Z3, Z7)
	CMPQ       R10, $192
	JBE        ghfold
	GROUP(192, K4, Z4, Z8)

ghfold:
	// lo ^= mid << 64, hi ^= mid >> 64, in each lane; then the lanes summed.
	VPSRLDQ       $8, Z12, Z13
	VPSLLDQ       $8, Z12, Z12
	VPXORQ        Z12, Z10, Z10
	VPXORQ        Z13, Z11, Z11
	VEXTRACTI64X4 $1, Z10, Y12
	VPXORQ        Y12, Y10, Y10
	VEXTRACTI32X4 $1, Y10, X12
	VPXORQ        X12, X10, X10
	VEXTRACTI64X4 $1, Z11, Y13
	VPXORQ        Y13, Y11, Y11
	VEXTRACTI32X4 $1, Y11, X13
	VPXORQ        X13, X11, X11
	REDUCE

	ADDQ $256, SI
	SUBQ R10, CX
	JNZ  ghloop

ghsegdone:
	DECQ R13
	JZ   ghlen
	MOVQ ct_base+88(FP), SI
	MOVQ ct_len+96(FP), CX
	JMP  ghseg

ghlen:
	// The length block, times H^1.
	MOVQ    aad_len+72(FP), AX
	ADDQ    aadLen+56(FP), AX
	SHLQ    $3, AX
	MOVQ    ct_len+96(FP), BX
	SHLQ    $3, BX
	VMOVQ   BX, X1
	VPINSRQ $1, AX, X1, X1
	MULH1
	VPSHUFB X31, X0, X0

	// XOR in E_K(j0).
	MOVQ        rk+8(FP), BX
	MOVQ        rounds+16(FP), R8
	MOVQ        j0Lo+24(FP), AX
	VMOVQ       AX, X1
	MOVQ        j0Hi+32(FP), AX
	VPINSRQ     $1, AX, X1, X1
	VPXOR       (BX), X1, X1
	VAESENC     16(BX), X1, X1
	VAESENC     32(BX), X1, X1
	VAESENC     48(BX), X1, X1
	VAESENC     64(BX), X1, X1
	VAESENC     80(BX), X1, X1
	VAESENC     96(BX), X1, X1
	VAESENC     112(BX), X1, X1
	VAESENC     128(BX), X1, X1
	VAESENC     144(BX), X1, X1
	CMPQ        R8, $10
	JEQ         ghlast10
	VAESENC     160(BX), X1, X1
	VAESENC     176(BX), X1, X1
	VAESENC     192(BX), X1, X1
	VAESENC     208(BX), X1, X1
	VAESENCLAST 224(BX), X1, X1
	JMP         ghout

ghlast10:
	VAESENCLAST 160(BX), X1, X1

ghout:
	VPXORQ  X1, X0, X0
	MOVQ    tag+112(FP), DI
	VMOVDQU X0, (DI)
	VZEROUPPER
	RET
