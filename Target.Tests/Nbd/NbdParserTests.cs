// Pure parsers and encoders, fed bytes directly (no sockets), plus the relations between limits.
using System.Buffers.Binary;
using System.Text;
using Target.Dedup;
using Target.Protocol;
using Target.Protocol.Nbd;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class NbdParserTests(ITestOutputHelper output)
{
    [Fact]
    public void Request_round_trips_and_reports_incomplete_and_bad_magic()
    {
        var header = new NbdRequestHeader(NbdCommandFlags.Fua, NbdCommand.Write, 0x0102030405060708, 0x1122334455667788, 4096);
        var bytes = new byte[40];
        Assert.Equal(28, NbdRequest.Write(bytes, header));

        for (int length = 0; length < 28; length++)
        {
            Assert.Equal(NbdParseStatus.Incomplete, NbdRequest.TryParse(bytes.AsSpan(0, length), out _, out int none));
            Assert.Equal(0, none);
        }
        Assert.Equal(NbdParseStatus.Complete, NbdRequest.TryParse(bytes, out NbdRequestHeader parsed, out int consumed));
        Assert.Equal(28, consumed);
        Assert.Equal(header, parsed);

        bytes[3] ^= 1;
        Assert.Equal(NbdParseStatus.BadMagic, NbdRequest.TryParse(bytes, out _, out consumed));
        Assert.Equal(0, consumed);
    }

    [Fact]
    public void Request_parser_never_throws_on_random_bytes()
    {
        Random random = TestSeed.Create(output);
        var bytes = new byte[64];
        for (int i = 0; i < 10_000; i++)
        {
            random.NextBytes(bytes);
            if (random.Next(2) == 0) BinaryPrimitives.WriteUInt32BigEndian(bytes, NbdMagic.Request);
            NbdParseStatus status = NbdRequest.TryParse(bytes.AsSpan(0, random.Next(bytes.Length + 1)), out _, out int consumed);
            Assert.Equal(status == NbdParseStatus.Complete ? 28 : 0, consumed);
        }
    }

    [Fact]
    public void Option_header_parses()
    {
        var bytes = new byte[16];
        NbdOptions.WriteHeader(bytes, NbdOption.Go, 77);
        Assert.Equal(NbdParseStatus.Complete, NbdOptions.TryParseHeader(bytes, out NbdOptionHeader header, out int consumed));
        Assert.Equal(new NbdOptionHeader(NbdOption.Go, 77), header);
        Assert.Equal(16, consumed);
        Assert.Equal(NbdParseStatus.Incomplete, NbdOptions.TryParseHeader(bytes.AsSpan(0, 15), out _, out _));
        bytes[0] = 0;
        Assert.Equal(NbdParseStatus.BadMagic, NbdOptions.TryParseHeader(bytes, out _, out _));
    }

    [Fact]
    public void Info_request_parses_known_items_and_rejects_bad_lengths()
    {
        byte[] data = TestNbdClient.InfoData("disk", NbdInfo.BlockSize, 999, NbdInfo.Name);
        Assert.True(NbdOptions.TryParseInfoRequest(data, out string name, out NbdInfoRequests requests));
        Assert.Equal("disk", name);
        Assert.Equal(NbdInfoRequests.BlockSize | NbdInfoRequests.Name, requests);

        Assert.False(NbdOptions.TryParseInfoRequest(data.AsSpan(0, data.Length - 1), out _, out _));
        Assert.False(NbdOptions.TryParseInfoRequest(data.AsSpan(0, 5), out _, out _));
        byte[] longName = (byte[])data.Clone();
        BinaryPrimitives.WriteUInt32BigEndian(longName, 1000);
        Assert.False(NbdOptions.TryParseInfoRequest(longName, out _, out _));

        byte[] nul = TestNbdClient.InfoData("a\0b");
        Assert.False(NbdOptions.TryParseInfoRequest(nul, out _, out _));
        byte[] badUtf8 = TestNbdClient.InfoData("ab");
        badUtf8[4] = 0xff;
        Assert.False(NbdOptions.TryParseInfoRequest(badUtf8, out _, out _));
    }

    [Fact]
    public void Meta_context_request_parses_and_rejects_overruns()
    {
        byte[] data = TestNbdClient.MetaContextData("disk", "base:allocation", "qemu:x");
        Assert.True(NbdOptions.TryParseMetaContextRequest(data, out string name, out string[] queries));
        Assert.Equal("disk", name);
        Assert.Equal(["base:allocation", "qemu:x"], queries);
        for (int cut = 1; cut < data.Length; cut++) Assert.False(NbdOptions.TryParseMetaContextRequest(data.AsSpan(0, data.Length - cut), out _, out _));
        Assert.False(NbdOptions.TryParseMetaContextRequest([.. data, 0], out _, out _));

        Assert.True(NbdOptions.SelectsBaseAllocation([], listing: true));
        Assert.False(NbdOptions.SelectsBaseAllocation([], listing: false));
        Assert.True(NbdOptions.SelectsBaseAllocation(["base:"], listing: true));
        Assert.False(NbdOptions.SelectsBaseAllocation(["base:"], listing: false));
        Assert.False(NbdOptions.SelectsBaseAllocation(["base:other", "x-y:z"], listing: true));
    }

    [Fact]
    public void Error_chunk_cuts_long_messages_on_a_character_boundary()
    {
        var buffer = new byte[NbdLimits.SmallReplyBytes];
        string message = new string('é', 500);
        int bytes = NbdReplies.WriteErrorChunk(buffer, 5, NbdError.IO, message);
        Assert.True(bytes <= buffer.Length);
        Assert.Equal(NbdMagic.StructuredReply, BinaryPrimitives.ReadUInt32BigEndian(buffer));
        Assert.Equal(NbdReplyType.FlagDone, BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(4)));
        Assert.Equal(NbdReplyType.Error, BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(6)));
        uint payload = BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(16));
        Assert.Equal(bytes - 20, (int)payload);
        int messageBytes = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(24));
        Assert.Equal(payload - 6, (uint)messageBytes);
        Assert.True(messageBytes <= NbdLimits.ErrorMessageBytesMax);
        Assert.Equal(0, messageBytes % 2);
        Assert.Equal(new string('é', messageBytes / 2), Encoding.UTF8.GetString(buffer, 26, messageBytes));
    }

    [Fact]
    public void Allocation_status_follows_base_allocation()
    {
        Assert.Equal(NbdAllocationState.Hole | NbdAllocationState.Zero, NbdReplies.AllocationStatus(ExtentKind.Hole));
        Assert.Equal(NbdAllocationState.Zero, NbdReplies.AllocationStatus(ExtentKind.Zero));
        Assert.Equal(0u, NbdReplies.AllocationStatus(ExtentKind.Data));
    }

    [Fact]
    public void Storage_exceptions_map_to_nbd_errors()
    {
        Assert.Equal(NbdError.NoSpace, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new NoSpaceException("x"))));
        Assert.Equal(NbdError.Perm, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new ReadOnlyVolumeException("x"))));
        Assert.Equal(NbdError.Invalid, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new Target.Dedup.OutOfRangeException("x"))));
        Assert.Equal(NbdError.IO, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new MediaErrorException("x"))));
        Assert.Equal(NbdError.NotSupported, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new FastZeroUnsupportedException("x"))));
        Assert.Equal(NbdError.Shutdown, ProtocolErrors.ToNbdError(ProtocolErrors.Classify(new NotOwnerException("x"))));
        Assert.Equal(StorageErrorKind.Unexpected, ProtocolErrors.Classify(new NullReferenceException()));
        Assert.Equal(NbdError.IO, ProtocolErrors.ToNbdError(StorageErrorKind.Unexpected));
    }

    [Fact]
    public void Limits_hold_their_relations()
    {
        // The spec: READ/WRITE up to 2^25 must not be treated as abuse.
        Assert.Equal(1 << 25, NbdLimits.MaxRequestBytes);
        Assert.True(NbdLimits.DrainableWriteBytesMax > NbdLimits.MaxRequestBytes);
        Assert.True(NbdLimits.InFlightBytesMax >= NbdLimits.MaxRequestBytes);
        // A request header plus a small write fits the receive buffer; options fit it whole.
        Assert.True(NbdLimits.ReceiveBufferBytes >= NbdLimits.OptionHeaderBytes + NbdLimits.OptionDataBytesMax);
        Assert.True(NbdLimits.DirectReceiveMinBytes <= NbdLimits.ReceiveBufferBytes);
        Assert.True(NbdLimits.CoalesceReplyBytesMax <= NbdLimits.SendBufferBytes);
        // Header-only replies fit the per-request buffer.
        Assert.True(NbdReplies.ErrorPrefixBytes + NbdLimits.ErrorMessageBytesMax <= NbdLimits.SmallReplyBytes);
        Assert.True(NbdReplies.BlockStatusPrefixBytes + NbdReplies.BlockStatusDescriptorBytes <= NbdLimits.SmallReplyBytes);
        // Advertised block sizes obey the spec's constraints.
        int minimum = NbdLimits.MinimumBlockBytes;
        int preferred = NbdLimits.PreferredBlockBytes;
        Assert.True(minimum > 0 && minimum <= 65536 && (minimum & (minimum - 1)) == 0);
        Assert.True(preferred >= 512 && (preferred & (preferred - 1)) == 0);
        Assert.Equal(0, NbdLimits.MaxRequestBytes % NbdLimits.MinimumBlockBytes);
        Assert.True(NbdLimits.MaxRequestBytes >= 1 << 20);
        // An OFFSET_DATA chunk length field (u32) holds the largest read.
        Assert.True((long)NbdLimits.MaxRequestBytes + 8 <= uint.MaxValue);
    }
}
