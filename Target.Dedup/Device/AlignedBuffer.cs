// A block of native memory aligned to the sector size, as O_DIRECT requires. Freed exactly once.
using System.Runtime.InteropServices;

namespace Target.Dedup.Device;

public sealed unsafe class AlignedBuffer : IDisposable
{
    private byte* _pointer;

    public AlignedBuffer(int lengthBytes)
    {
        if (lengthBytes <= 0 || lengthBytes % DeviceConstants.SectorBytes != 0)
            throw new ArgumentOutOfRangeException(nameof(lengthBytes), lengthBytes, "must be a positive multiple of 4096");
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)lengthBytes, DeviceConstants.SectorBytes);
        NativeMemory.Clear(_pointer, (nuint)lengthBytes);
        Length = lengthBytes;
    }

    public int Length { get; }

    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(AlignedBuffer));

    public Span<byte> Span => new(Pointer, Length);

    public Span<byte> Slice(int offset, int length) => Span.Slice(offset, length);

    public void Dispose()
    {
        if (_pointer != null)
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
        }
    }
}
