// Fingerprint and checksum cost per 4 KiB chunk, from a page-aligned native buffer as the
// engine hands them over. Expected: 0 B allocated per operation for every benchmark.
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Target.Dedup.Hashing;

namespace Target.Bench;

[MemoryDiagnoser]
public unsafe class HashBenchmarks
{
    private const int ChunkBytes = 4096;
    private const int InputSeed = 4096;

    private byte* _chunk;

    private ReadOnlySpan<byte> Chunk => new(_chunk, ChunkBytes);

    [GlobalSetup]
    public void Setup()
    {
        _chunk = (byte*)NativeMemory.AlignedAlloc(ChunkBytes, ChunkBytes);
        new Random(InputSeed).NextBytes(new Span<byte>(_chunk, ChunkBytes));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_chunk);
        _chunk = null;
    }

    [Benchmark(Baseline = true)]
    public Fingerprint Sha256Fingerprint4KiB() => Sha256Fingerprinter.Instance.Compute(Chunk);

    [Benchmark]
    public Fingerprint Xxh3Fingerprint4KiB() => Xxh3Fingerprinter.Instance.Compute(Chunk);

    [Benchmark]
    public UInt128 Xxh3Hash128_4KiB() => Xxh3.Hash128(Chunk);

    /// <summary>The AVX2 kernel: what <see cref="Xxh3Hash128_4KiB"/> runs where the CPU has no AVX-512.</summary>
    [Benchmark]
    public ulong Xxh3Avx2Kernel4KiB()
    {
        Xxh3.Hash128(Chunk, Xxh3Kernel.Avx2, out ulong low, out ulong high);
        return low ^ high;
    }

    [Benchmark]
    public uint Crc32C4KiB() => Crc32C.Compute(Chunk);

    /// <summary>The CRC instruction in three streams: what <see cref="Crc32C4KiB"/> runs where the CPU cannot fold with 512-bit carry-less multiplication.</summary>
    [Benchmark]
    public uint Crc32CThreeStreams4KiB() => Crc32C.AppendInstructions(0, Chunk, fold: false);
}
