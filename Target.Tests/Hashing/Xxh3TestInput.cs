// The deterministic test stream that tools/gen-xxh3-vectors.sh also builds: xorshift32
// (x ^= x << 13; x ^= x >> 17; x ^= x << 5) from seed 0x9E3779B9, one byte (x & 0xFF) per
// step. Invariant: Stream(n) is a prefix of Stream(m) for n <= m, byte for byte as the script.
namespace Target.Tests.Hashing;

internal static class Xxh3TestInput
{
    public const uint StreamSeed = 0x9E3779B9;

    public static byte[] Stream(int lengthBytes)
    {
        var bytes = new byte[lengthBytes];
        uint x = StreamSeed;
        for (int i = 0; i < bytes.Length; i++)
        {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes[i] = (byte)x;
        }
        return bytes;
    }

    public static string Canonical(UInt128 hash) => hash.ToString("x32");
}
