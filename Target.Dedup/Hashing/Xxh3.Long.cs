// XXH3 long inputs (> 240 bytes): stripes of 64 bytes accumulate into eight 64-bit lanes, a
// scramble ends each 1024-byte block, the last stripe is always the input's final 64 bytes,
// and two merges of the lanes give the low and high halves. Guarantees: the AVX-512, AVX2, SSE2
// and scalar kernels compute the same lanes, step for step, as XXH3_hashLong_128b_internal;
// loads never go past the input's end; the lanes live in registers or on the stack.
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Target.Dedup.Hashing;

internal enum Xxh3Kernel
{
    Scalar = 0,
    Sse2 = 1,
    Avx2 = 2,
    Avx512 = 3,
}

public static partial class Xxh3
{
    private const int StripeBytes = 64;
    private const int SecretConsumeRateBytes = 8;
    private const int StripesPerBlock = (SecretSizeBytes - StripeBytes) / SecretConsumeRateBytes;
    private const int BlockBytes = StripeBytes * StripesPerBlock;
    private const int ScrambleSecretOffset = SecretSizeBytes - StripeBytes;
    // XXH_SECRET_LASTACC_START: not a multiple of 8, so the last stripe's key differs from the others.
    private const int LastStripeSecretOffset = SecretSizeBytes - StripeBytes - 7;
    // XXH_SECRET_MERGEACCS_START.
    private const int MergeSecretOffset = 11;
    private const int MergeHighSecretOffset = SecretSizeBytes - 64 - MergeSecretOffset;
    // _MM_SHUFFLE(0, 3, 0, 1): each 64-bit lane's high half moved to its low half.
    private const byte ShuffleHighToLow = 0x31;
    // _MM_SHUFFLE(1, 0, 3, 2): the two 64-bit lanes of each 128-bit half swapped.
    private const byte ShuffleSwapLanes = 0x4E;

    internal static readonly Xxh3Kernel BestKernel =
        Avx512F.IsSupported ? Xxh3Kernel.Avx512 :
        Avx2.IsSupported ? Xxh3Kernel.Avx2 :
        Sse2.IsSupported ? Xxh3Kernel.Sse2 :
        Xxh3Kernel.Scalar;

    internal static bool IsSupported(Xxh3Kernel kernel) => kernel switch
    {
        Xxh3Kernel.Scalar => true,
        Xxh3Kernel.Sse2 => Sse2.IsSupported,
        Xxh3Kernel.Avx2 => Avx2.IsSupported,
        Xxh3Kernel.Avx512 => Avx512F.IsSupported,
        _ => false,
    };

    [InlineArray(8)]
    private struct Lanes
    {
        private ulong _lane0;
    }

    private static void HashLong(ref byte input, nuint length, Xxh3Kernel kernel, out ulong low64, out ulong high64)
    {
        Lanes lanes = default;
        if (kernel == Xxh3Kernel.Avx512 && Avx512F.IsSupported)
            AccumulateAllAvx512(ref input, length, ref lanes);
        else if (kernel == Xxh3Kernel.Avx2 && Avx2.IsSupported)
            AccumulateAllAvx2(ref input, length, ref lanes);
        else if (kernel == Xxh3Kernel.Sse2 && Sse2.IsSupported)
            AccumulateAllSse2(ref input, length, ref lanes);
        else if (kernel == Xxh3Kernel.Scalar)
            AccumulateAllScalar(ref input, length, ref lanes);
        else
            ThrowKernelNotSupported(kernel);

        low64 = MergeLanes(ref lanes, MergeSecretOffset, (ulong)length * Prime64_1);
        high64 = MergeLanes(ref lanes, MergeHighSecretOffset, ~((ulong)length * Prime64_2));
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowKernelNotSupported(Xxh3Kernel kernel) =>
        throw new PlatformNotSupportedException($"XXH3 kernel {kernel} is not supported on this CPU");

    private static ulong MergeLanes(ref Lanes lanes, nuint secretOffset, ulong start)
    {
        ulong result = start;
        for (int i = 0; i < 4; i++)
        {
            nuint key = secretOffset + (nuint)(16 * i);
            result += Mul128Fold64(lanes[2 * i] ^ SecretLE64(key), lanes[2 * i + 1] ^ SecretLE64(key + 8));
        }
        return Avalanche(result);
    }

    // The kernels stay out of line, as XXH3_hashLong does in the reference: inlined into
    // HashLong, the AVX2 loop measured 2.5x slower (245 ns against 91 ns per 4 KiB) with
    // instruction-for-instruction the same loop body.
    // AVX-512: all eight lanes in one register, a stripe per load (XXH3_accumulate_512_avx512).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AccumulateAllAvx512(ref byte input, nuint length, ref Lanes lanes)
    {
        ref byte secret = ref MemoryMarshal.GetReference(Secret);
        Vector512<ulong> acc = Vector512.Create(Prime32_3, Prime64_1, Prime64_2, Prime64_3, Prime64_4, Prime32_2, Prime64_5, Prime32_1);
        Vector512<ulong> scrambleKey = Vector512.LoadUnsafe(ref secret, ScrambleSecretOffset).AsUInt64();

        nuint blocks = (length - 1) / BlockBytes;
        ref byte block = ref input;
        for (nuint b = 0; b < blocks; b++)
        {
            for (nuint s = 0; s < StripesPerBlock; s++)
                acc = RoundAvx512(acc, Vector512.LoadUnsafe(ref block, s * StripeBytes), Vector512.LoadUnsafe(ref secret, s * SecretConsumeRateBytes));
            acc = ScrambleAvx512(acc, scrambleKey);
            block = ref Unsafe.Add(ref block, BlockBytes);
        }

        nuint stripes = (length - 1 - blocks * BlockBytes) / StripeBytes;
        for (nuint s = 0; s < stripes; s++)
            acc = RoundAvx512(acc, Vector512.LoadUnsafe(ref block, s * StripeBytes), Vector512.LoadUnsafe(ref secret, s * SecretConsumeRateBytes));

        acc = RoundAvx512(acc, Vector512.LoadUnsafe(ref input, length - StripeBytes), Vector512.LoadUnsafe(ref secret, LastStripeSecretOffset));
        acc.StoreUnsafe(ref lanes[0]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> RoundAvx512(Vector512<ulong> acc, Vector512<byte> data, Vector512<byte> key)
    {
        Vector512<uint> dataKey = (data ^ key).AsUInt32();
        Vector512<uint> dataKeyHigh = Avx512F.Shuffle(dataKey, ShuffleHighToLow);
        Vector512<ulong> product = Avx512F.Multiply(dataKey, dataKeyHigh);
        Vector512<ulong> swapped = Avx512F.Shuffle(data.AsUInt32(), ShuffleSwapLanes).AsUInt64();
        return acc + swapped + product;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> ScrambleAvx512(Vector512<ulong> acc, Vector512<ulong> key)
    {
        Vector512<uint> prime = Vector512.Create((uint)Prime32_1);
        Vector512<uint> dataKey = (acc ^ Avx512F.ShiftRightLogical(acc, 47) ^ key).AsUInt32();
        Vector512<uint> dataKeyHigh = Avx512F.Shuffle(dataKey, ShuffleHighToLow);
        Vector512<ulong> productLow = Avx512F.Multiply(dataKey, prime);
        Vector512<ulong> productHigh = Avx512F.Multiply(dataKeyHigh, prime);
        return productLow + Avx512F.ShiftLeftLogical(productHigh, 32);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AccumulateAllAvx2(ref byte input, nuint length, ref Lanes lanes)
    {
        ref byte secret = ref MemoryMarshal.GetReference(Secret);
        Vector256<ulong> acc0 = Vector256.Create(Prime32_3, Prime64_1, Prime64_2, Prime64_3);
        Vector256<ulong> acc1 = Vector256.Create(Prime64_4, Prime32_2, Prime64_5, Prime32_1);
        Vector256<ulong> scrambleKey0 = Vector256.LoadUnsafe(ref secret, ScrambleSecretOffset).AsUInt64();
        Vector256<ulong> scrambleKey1 = Vector256.LoadUnsafe(ref secret, ScrambleSecretOffset + 32).AsUInt64();

        nuint blocks = (length - 1) / BlockBytes;
        ref byte block = ref input;
        for (nuint b = 0; b < blocks; b++)
        {
            for (nuint s = 0; s < StripesPerBlock; s++)
            {
                ref byte stripe = ref Unsafe.Add(ref block, s * StripeBytes);
                nuint key = s * SecretConsumeRateBytes;
                acc0 = RoundAvx2(acc0, Vector256.LoadUnsafe(ref stripe), Vector256.LoadUnsafe(ref secret, key));
                acc1 = RoundAvx2(acc1, Vector256.LoadUnsafe(ref stripe, 32), Vector256.LoadUnsafe(ref secret, key + 32));
            }
            acc0 = ScrambleAvx2(acc0, scrambleKey0);
            acc1 = ScrambleAvx2(acc1, scrambleKey1);
            block = ref Unsafe.Add(ref block, BlockBytes);
        }

        nuint stripes = (length - 1 - blocks * BlockBytes) / StripeBytes;
        for (nuint s = 0; s < stripes; s++)
        {
            ref byte stripe = ref Unsafe.Add(ref block, s * StripeBytes);
            nuint key = s * SecretConsumeRateBytes;
            acc0 = RoundAvx2(acc0, Vector256.LoadUnsafe(ref stripe), Vector256.LoadUnsafe(ref secret, key));
            acc1 = RoundAvx2(acc1, Vector256.LoadUnsafe(ref stripe, 32), Vector256.LoadUnsafe(ref secret, key + 32));
        }

        ref byte last = ref Unsafe.Add(ref input, length - StripeBytes);
        acc0 = RoundAvx2(acc0, Vector256.LoadUnsafe(ref last), Vector256.LoadUnsafe(ref secret, LastStripeSecretOffset));
        acc1 = RoundAvx2(acc1, Vector256.LoadUnsafe(ref last, 32), Vector256.LoadUnsafe(ref secret, LastStripeSecretOffset + 32));

        acc0.StoreUnsafe(ref lanes[0]);
        acc1.StoreUnsafe(ref lanes[4]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ulong> RoundAvx2(Vector256<ulong> acc, Vector256<byte> data, Vector256<byte> key)
    {
        Vector256<uint> dataKey = (data ^ key).AsUInt32();
        Vector256<uint> dataKeyHigh = Avx2.Shuffle(dataKey, ShuffleHighToLow);
        Vector256<ulong> product = Avx2.Multiply(dataKey, dataKeyHigh);
        Vector256<ulong> swapped = Avx2.Shuffle(data.AsUInt32(), ShuffleSwapLanes).AsUInt64();
        return acc + swapped + product;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ulong> ScrambleAvx2(Vector256<ulong> acc, Vector256<ulong> key)
    {
        Vector256<uint> prime = Vector256.Create((uint)Prime32_1);
        Vector256<uint> dataKey = (acc ^ Avx2.ShiftRightLogical(acc, 47) ^ key).AsUInt32();
        Vector256<uint> dataKeyHigh = Avx2.Shuffle(dataKey, ShuffleHighToLow);
        Vector256<ulong> productLow = Avx2.Multiply(dataKey, prime);
        Vector256<ulong> productHigh = Avx2.Multiply(dataKeyHigh, prime);
        return productLow + Avx2.ShiftLeftLogical(productHigh, 32);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AccumulateAllSse2(ref byte input, nuint length, ref Lanes lanes)
    {
        ref byte secret = ref MemoryMarshal.GetReference(Secret);
        Vector128<ulong> acc0 = Vector128.Create(Prime32_3, Prime64_1);
        Vector128<ulong> acc1 = Vector128.Create(Prime64_2, Prime64_3);
        Vector128<ulong> acc2 = Vector128.Create(Prime64_4, Prime32_2);
        Vector128<ulong> acc3 = Vector128.Create(Prime64_5, Prime32_1);

        Vector128<ulong> scrambleKey0 = Vector128.LoadUnsafe(ref secret, ScrambleSecretOffset).AsUInt64();
        Vector128<ulong> scrambleKey1 = Vector128.LoadUnsafe(ref secret, ScrambleSecretOffset + 16).AsUInt64();
        Vector128<ulong> scrambleKey2 = Vector128.LoadUnsafe(ref secret, ScrambleSecretOffset + 32).AsUInt64();
        Vector128<ulong> scrambleKey3 = Vector128.LoadUnsafe(ref secret, ScrambleSecretOffset + 48).AsUInt64();

        nuint blocks = (length - 1) / BlockBytes;
        ref byte block = ref input;
        for (nuint b = 0; b < blocks; b++)
        {
            for (nuint s = 0; s < StripesPerBlock; s++)
            {
                ref byte stripe = ref Unsafe.Add(ref block, s * StripeBytes);
                ref byte key = ref Unsafe.Add(ref secret, s * SecretConsumeRateBytes);
                acc0 = RoundSse2(acc0, Vector128.LoadUnsafe(ref stripe), Vector128.LoadUnsafe(ref key));
                acc1 = RoundSse2(acc1, Vector128.LoadUnsafe(ref stripe, 16), Vector128.LoadUnsafe(ref key, 16));
                acc2 = RoundSse2(acc2, Vector128.LoadUnsafe(ref stripe, 32), Vector128.LoadUnsafe(ref key, 32));
                acc3 = RoundSse2(acc3, Vector128.LoadUnsafe(ref stripe, 48), Vector128.LoadUnsafe(ref key, 48));
            }
            acc0 = ScrambleSse2(acc0, scrambleKey0);
            acc1 = ScrambleSse2(acc1, scrambleKey1);
            acc2 = ScrambleSse2(acc2, scrambleKey2);
            acc3 = ScrambleSse2(acc3, scrambleKey3);
            block = ref Unsafe.Add(ref block, BlockBytes);
        }

        nuint stripes = (length - 1 - blocks * BlockBytes) / StripeBytes;
        for (nuint s = 0; s < stripes; s++)
        {
            ref byte stripe = ref Unsafe.Add(ref block, s * StripeBytes);
            ref byte key = ref Unsafe.Add(ref secret, s * SecretConsumeRateBytes);
            acc0 = RoundSse2(acc0, Vector128.LoadUnsafe(ref stripe), Vector128.LoadUnsafe(ref key));
            acc1 = RoundSse2(acc1, Vector128.LoadUnsafe(ref stripe, 16), Vector128.LoadUnsafe(ref key, 16));
            acc2 = RoundSse2(acc2, Vector128.LoadUnsafe(ref stripe, 32), Vector128.LoadUnsafe(ref key, 32));
            acc3 = RoundSse2(acc3, Vector128.LoadUnsafe(ref stripe, 48), Vector128.LoadUnsafe(ref key, 48));
        }

        ref byte last = ref Unsafe.Add(ref input, length - StripeBytes);
        ref byte lastKey = ref Unsafe.Add(ref secret, LastStripeSecretOffset);
        acc0 = RoundSse2(acc0, Vector128.LoadUnsafe(ref last), Vector128.LoadUnsafe(ref lastKey));
        acc1 = RoundSse2(acc1, Vector128.LoadUnsafe(ref last, 16), Vector128.LoadUnsafe(ref lastKey, 16));
        acc2 = RoundSse2(acc2, Vector128.LoadUnsafe(ref last, 32), Vector128.LoadUnsafe(ref lastKey, 32));
        acc3 = RoundSse2(acc3, Vector128.LoadUnsafe(ref last, 48), Vector128.LoadUnsafe(ref lastKey, 48));

        acc0.StoreUnsafe(ref lanes[0]);
        acc1.StoreUnsafe(ref lanes[2]);
        acc2.StoreUnsafe(ref lanes[4]);
        acc3.StoreUnsafe(ref lanes[6]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<ulong> RoundSse2(Vector128<ulong> acc, Vector128<byte> data, Vector128<byte> key)
    {
        Vector128<uint> dataKey = (data ^ key).AsUInt32();
        Vector128<uint> dataKeyHigh = Sse2.Shuffle(dataKey, ShuffleHighToLow);
        Vector128<ulong> product = Sse2.Multiply(dataKey, dataKeyHigh);
        Vector128<ulong> swapped = Sse2.Shuffle(data.AsUInt32(), ShuffleSwapLanes).AsUInt64();
        return acc + swapped + product;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<ulong> ScrambleSse2(Vector128<ulong> acc, Vector128<ulong> key)
    {
        Vector128<uint> prime = Vector128.Create((uint)Prime32_1);
        Vector128<uint> dataKey = (acc ^ Sse2.ShiftRightLogical(acc, 47) ^ key).AsUInt32();
        Vector128<uint> dataKeyHigh = Sse2.Shuffle(dataKey, ShuffleHighToLow);
        Vector128<ulong> productLow = Sse2.Multiply(dataKey, prime);
        Vector128<ulong> productHigh = Sse2.Multiply(dataKeyHigh, prime);
        return productLow + Sse2.ShiftLeftLogical(productHigh, 32);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void AccumulateAllScalar(ref byte input, nuint length, ref Lanes lanes)
    {
        ref byte secret = ref MemoryMarshal.GetReference(Secret);
        lanes[0] = Prime32_3;
        lanes[1] = Prime64_1;
        lanes[2] = Prime64_2;
        lanes[3] = Prime64_3;
        lanes[4] = Prime64_4;
        lanes[5] = Prime32_2;
        lanes[6] = Prime64_5;
        lanes[7] = Prime32_1;

        nuint blocks = (length - 1) / BlockBytes;
        for (nuint b = 0; b < blocks; b++)
        {
            ref byte block = ref Unsafe.Add(ref input, b * BlockBytes);
            for (nuint s = 0; s < StripesPerBlock; s++)
                RoundScalar(ref lanes, ref Unsafe.Add(ref block, s * StripeBytes), ref Unsafe.Add(ref secret, s * SecretConsumeRateBytes));
            for (int lane = 0; lane < 8; lane++)
            {
                ulong acc = lanes[lane];
                acc ^= acc >> 47;
                acc ^= ReadLE64(ref secret, ScrambleSecretOffset + (nuint)(8 * lane));
                lanes[lane] = acc * Prime32_1;
            }
        }

        ref byte tail = ref Unsafe.Add(ref input, blocks * BlockBytes);
        nuint stripes = (length - 1 - blocks * BlockBytes) / StripeBytes;
        for (nuint s = 0; s < stripes; s++)
            RoundScalar(ref lanes, ref Unsafe.Add(ref tail, s * StripeBytes), ref Unsafe.Add(ref secret, s * SecretConsumeRateBytes));

        RoundScalar(ref lanes, ref Unsafe.Add(ref input, length - StripeBytes), ref Unsafe.Add(ref secret, LastStripeSecretOffset));
    }

    private static void RoundScalar(ref Lanes lanes, ref byte stripe, ref byte key)
    {
        for (int lane = 0; lane < 8; lane++)
        {
            ulong data = ReadLE64(ref stripe, (nuint)(8 * lane));
            ulong dataKey = data ^ ReadLE64(ref key, (nuint)(8 * lane));
            lanes[lane ^ 1] += data;
            lanes[lane] += (dataKey & 0xFFFFFFFFUL) * (dataKey >> 32);
        }
    }
}
