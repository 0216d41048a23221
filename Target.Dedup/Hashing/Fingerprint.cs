// A chunk's 128-bit content fingerprint. Guarantees: the serialized form is exactly 16 bytes,
// Low then High, each little-endian, and ReadFrom(WriteTo(x)) == x; equality is bitwise;
// Prefix64 is Low, the half the dedup index keys on.
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;

namespace Target.Dedup.Hashing;

public readonly struct Fingerprint : IEquatable<Fingerprint>
{
    public const int SizeBytes = 16;

    public Fingerprint(ulong low, ulong high)
    {
        Low = low;
        High = high;
    }

    public ulong Low { get; }

    public ulong High { get; }

    public ulong Prefix64 => Low;

    public void WriteTo(Span<byte> dest16)
    {
        if (dest16.Length < SizeBytes)
            ThrowTooShort(nameof(dest16), dest16.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(dest16, Low);
        BinaryPrimitives.WriteUInt64LittleEndian(dest16[8..], High);
    }

    public static Fingerprint ReadFrom(ReadOnlySpan<byte> src16)
    {
        if (src16.Length < SizeBytes)
            ThrowTooShort(nameof(src16), src16.Length);
        return new Fingerprint(
            BinaryPrimitives.ReadUInt64LittleEndian(src16),
            BinaryPrimitives.ReadUInt64LittleEndian(src16[8..]));
    }

    public bool Equals(Fingerprint other) => Low == other.Low && High == other.High;

    public override bool Equals([NotNullWhen(true)] object? obj) => obj is Fingerprint other && Equals(other);

    public override int GetHashCode() => (int)Low ^ (int)(Low >> 32);

    public static bool operator ==(Fingerprint left, Fingerprint right) => left.Equals(right);

    public static bool operator !=(Fingerprint left, Fingerprint right) => !left.Equals(right);

    /// <summary>32 lower-case hex digits of the 128-bit value, High first (xxhsum's canonical form for XXH3-128).</summary>
    public override string ToString() => $"{High:x16}{Low:x16}";

    [DoesNotReturn]
    private static void ThrowTooShort(string parameter, int lengthBytes) =>
        throw new ArgumentException($"a fingerprint needs {SizeBytes} bytes, the span has {lengthBytes}", parameter);
}
