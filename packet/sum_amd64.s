#include "textflag.h"

// func sumVector(b []byte) uint64
//
// Each 32-byte load is split into its 64-bit lanes' low and high 32-bit
// halves (VPAND with 0x00000000ffffffff, VPSRLQ 32), added to two 64-bit
// accumulators per load; four loads an iteration, so eight independent
// accumulators. A lane gains less than 2^32 per 128 bytes, so with
// len(b) <= 1<<30 no lane of the final sum of all eight reaches 2^59, and
// adding the four lanes cannot overflow either.
TEXT ·sumVector(SB), NOSPLIT, $0-32
	MOVQ b_base+0(FP), SI
	MOVQ b_len+8(FP), CX
	VPCMPEQD Y15, Y15, Y15
	VPSRLQ   $32, Y15, Y15
	VPXOR    Y0, Y0, Y0
	VPXOR    Y1, Y1, Y1
	VPXOR    Y2, Y2, Y2
	VPXOR    Y3, Y3, Y3
	VPXOR    Y4, Y4, Y4
	VPXOR    Y5, Y5, Y5
	VPXOR    Y6, Y6, Y6
	VPXOR    Y7, Y7, Y7

loop:
	VMOVDQU (SI), Y8
	VMOVDQU 32(SI), Y9
	VMOVDQU 64(SI), Y10
	VMOVDQU 96(SI), Y11
	VPSRLQ  $32, Y8, Y12
	VPSRLQ  $32, Y9, Y13
	VPAND   Y15, Y8, Y8
	VPAND   Y15, Y9, Y9
	VPADDQ  Y12, Y0, Y0
	VPADDQ  Y8, Y1, Y1
	VPADDQ  Y13, Y2, Y2
	VPADDQ  Y9, Y3, Y3
	VPSRLQ  $32, Y10, Y12
	VPSRLQ  $32, Y11, Y13
	VPAND   Y15, Y10, Y10
	VPAND   Y15, Y11, Y11
	VPADDQ  Y12, Y4, Y4
	VPADDQ  Y10, Y5, Y5
	VPADDQ  Y13, Y6, Y6
	VPADDQ  Y11, Y7, Y7
	ADDQ    $128, SI
	SUBQ    $128, CX
	JNZ     loop

	VPADDQ       Y1, Y0, Y0
	VPADDQ       Y3, Y2, Y2
	VPADDQ       Y5, Y4, Y4
	VPADDQ       Y7, Y6, Y6
	VPADDQ       Y2, Y0, Y0
	VPADDQ       Y6, Y4, Y4
	VPADDQ       Y4, Y0, Y0
	VEXTRACTI128 $1, Y0, X1
	VPADDQ       X1, X0, X0
	VMOVQ        X0, AX
	VPEXTRQ      $1, X0, BX
	ADDQ         BX, AX
	VZEROUPPER
	MOVQ         AX, ret+24(FP)
	RET
