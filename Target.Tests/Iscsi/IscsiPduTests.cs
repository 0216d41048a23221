// PDU framing and encoding, fed byte arrays (no sockets): header parsing, digests, lengths,
// text key parsing and the target PDU encoders, field by field.
using System.Buffers.Binary;
using System.Text;
using Target.Dedup.Hashing;
using Target.Protocol.Iscsi;

namespace Target.Tests.Iscsi;

public sealed class IscsiPduTests
{
    private static byte[] ScsiCommandBhs(uint itt = 0x11223344, uint edtl = 4096, uint cmdSn = 7, int dataSegment = 0, int ahsWords = 0)
    {
        byte[] bhs = new byte[48];
        bhs[0] = (byte)IscsiOpcode.ScsiCommand;
        bhs[1] = 0x80 | 0x40 | 0x01;    // F, R, SIMPLE
        bhs[4] = (byte)ahsWords;
        bhs[5] = (byte)(dataSegment >> 16);
        bhs[6] = (byte)(dataSegment >> 8);
        bhs[7] = (byte)dataSegment;
        bhs[9] = 3;                     // LUN 3
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(20), edtl);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(24), cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(28), 99);
        bhs[32] = 0x28;
        return bhs;
    }

    [Fact]
    public void A_header_needs_48_bytes_and_its_ahs()
    {
        byte[] bhs = ScsiCommandBhs(ahsWords: 2);
        Assert.Equal(IscsiParseStatus.Incomplete, IscsiPdu.TryParseHeader(bhs.AsSpan(0, 47), false, out _));
        Assert.Equal(IscsiParseStatus.Incomplete, IscsiPdu.TryParseHeader(bhs, false, out _));
        byte[] withAhs = [.. bhs, .. new byte[8]];
        Assert.Equal(IscsiParseStatus.Complete, IscsiPdu.TryParseHeader(withAhs, false, out IscsiPduHeader header));
        Assert.Equal(8, header.AhsBytes);
        Assert.Equal(56, header.HeaderBytes);
    }

    [Fact]
    public void Header_fields_decode()
    {
        byte[] bytes = [.. ScsiCommandBhs(dataSegment: 5), .. new byte[8]];
        Assert.Equal(IscsiParseStatus.Complete, IscsiPdu.TryParseHeader(bytes, false, out IscsiPduHeader header));
        Assert.Equal(IscsiOpcode.ScsiCommand, header.Opcode);
        Assert.False(header.Immediate);
        Assert.True(header.Final);
        Assert.Equal(0x11223344u, header.InitiatorTaskTag);
        Assert.Equal(4096u, header.Word20);
        Assert.Equal(7u, header.CmdSn);
        Assert.Equal(99u, header.ExpStatSn);
        Assert.Equal(0x0003000000000000ul, header.LunField);
        Assert.Equal(5, header.DataSegmentBytes);
        Assert.Equal(8, header.WireDataBytes(dataDigest: false));
        Assert.Equal(12, header.WireDataBytes(dataDigest: true));
        Assert.Equal(48, header.HeaderBytes);
    }

    [Fact]
    public void Header_digest_is_crc32c_little_endian_and_checked()
    {
        byte[] bhs = ScsiCommandBhs();
        byte[] digest = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(digest, Crc32C.Compute(bhs));
        byte[] good = [.. bhs, .. digest];
        Assert.Equal(IscsiParseStatus.Complete, IscsiPdu.TryParseHeader(good, headerDigest: true, out IscsiPduHeader header));
        Assert.Equal(52, header.HeaderBytes);

        byte[] bad = (byte[])good.Clone();
        bad[20] ^= 1;
        Assert.Equal(IscsiParseStatus.HeaderDigestError, IscsiPdu.TryParseHeader(bad, headerDigest: true, out _));
        Assert.Equal(IscsiParseStatus.Incomplete, IscsiPdu.TryParseHeader(good.AsSpan(0, 51), headerDigest: true, out _));
    }

    [Fact]
    public void Data_digest_covers_the_padding()
    {
        byte[] data = Encoding.ASCII.GetBytes("abcde");
        uint digest = IscsiPdu.DataDigest(data, new byte[3]);
        Assert.Equal(Crc32C.Compute([.. data, 0, 0, 0]), digest);
    }

    [Fact]
    public void Scsi_response_encodes_status_residual_and_sense_length()
    {
        byte[] bhs = new byte[48];
        IscsiPduWriter.ScsiResponse(bhs, 0xAABBCCDD, IscsiFlags.Underflow, 0, 0x02, 512, 3, 20);
        IscsiPduWriter.SetSequenceNumbers(bhs, 10, 20, 147);
        Assert.Equal(0x21, bhs[0]);
        Assert.Equal(0x80 | 0x02, bhs[1]);
        Assert.Equal(0, bhs[2]);
        Assert.Equal(0x02, bhs[3]);
        Assert.Equal(20, bhs[7]);
        Assert.Equal(0xAABBCCDDu, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16)));
        Assert.Equal(10u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(24)));
        Assert.Equal(20u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(28)));
        Assert.Equal(147u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(32)));
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(36)));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(44)));
    }

    [Fact]
    public void Data_in_with_status_carries_status_and_residual_only_then()
    {
        byte[] bhs = new byte[48];
        IscsiPduWriter.DataIn(bhs, IscsiFlags.Final | IscsiFlags.Status | IscsiFlags.Overflow, 0, 5, 2, 8192, 100, 4096);
        Assert.Equal(0x25, bhs[0]);
        Assert.Equal(0x80 | 0x04 | 0x01, bhs[1]);
        Assert.Equal(0x00, bhs[3]);
        Assert.Equal(0x001000, bhs[5] << 16 | bhs[6] << 8 | bhs[7]);
        Assert.Equal(0xFFFFFFFFu, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(20)));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(36)));
        Assert.Equal(8192u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(40)));
        Assert.Equal(100u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(44)));

        IscsiPduWriter.DataIn(bhs, 0, 0x02, 5, 0, 0, 100, 4096);
        Assert.Equal(0, bhs[1]);
        Assert.Equal(0, bhs[3]);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(44)));
    }

    [Fact]
    public void R2t_login_and_reject_encode()
    {
        byte[] bhs = new byte[48];
        IscsiPduWriter.ReadyToTransfer(bhs, 0x0001000000000000, 9, 77, 4, 65536, 262144);
        Assert.Equal(0x31, bhs[0]);
        Assert.Equal(0x80, bhs[1]);
        Assert.Equal(1, bhs[9]);
        Assert.Equal(77u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(20)));
        Assert.Equal(4u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(36)));
        Assert.Equal(65536u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(40)));
        Assert.Equal(262144u, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(44)));

        IscsiPduWriter.LoginResponse(bhs, 0x87, [1, 2, 3, 4, 5, 6], 0x1234, 8, IscsiLoginStatus.NotFound, 10);
        Assert.Equal(0x23, bhs[0]);
        Assert.Equal(0x87, bhs[1]);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6 }, bhs[8..14]);
        Assert.Equal(0x1234, BinaryPrimitives.ReadUInt16BigEndian(bhs.AsSpan(14)));
        Assert.Equal(0x02, bhs[36]);
        Assert.Equal(0x03, bhs[37]);

        IscsiPduWriter.Reject(bhs, IscsiRejectReason.DataDigestError, 0);
        Assert.Equal(0x3F, bhs[0]);
        Assert.Equal(0x02, bhs[2]);
        Assert.Equal(48, bhs[7]);
        Assert.Equal(0xFFFFFFFFu, BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(16)));
    }

    [Fact]
    public void Text_keys_parse_and_malformed_text_is_refused()
    {
        var pairs = new List<KeyValuePair<string, string>>();
        Assert.True(IscsiText.TryParse("A=1\0B=\0C=x=y\0\0\0"u8, pairs, out _));
        Assert.Equal(new[] { ("A", "1"), ("B", ""), ("C", "x=y") }, pairs.Select(p => (p.Key, p.Value)));

        Assert.False(IscsiText.TryParse("A=1"u8, new(), out string? error));
        Assert.Contains("NUL", error);
        Assert.False(IscsiText.TryParse("novalue\0"u8, new(), out _));
        Assert.False(IscsiText.TryParse("=x\0"u8, new(), out _));
        Assert.False(IscsiText.TryParse(Encoding.ASCII.GetBytes(new string('k', 64) + "=1\0"), new(), out _));
        Assert.False(IscsiText.TryParse(new byte[] { (byte)'A', (byte)'=', 0xFF, 0 }, new(), out _));
    }

    [Fact]
    public void Limits_are_consistent()
    {
        // Any PDU whose data is not received in place fits the receive buffer whole.
        Assert.True(IscsiLimits.ReceiveBufferBytes >= IscsiLimits.HeaderBytesMax + IscsiLimits.TargetMaxRecvDataSegmentBytes + 3 + IscsiLimits.DigestBytes);
        Assert.True(IscsiLimits.FirstBurstBytes <= IscsiLimits.MaxBurstBytes);
        Assert.True(IscsiLimits.MaxBurstBytes <= IscsiLimits.MaxTransferBytes);
        Assert.True(IscsiLimits.QueueDepth >= 64);
        Assert.True(IscsiLimits.CoalesceDataBytesMax + IscsiLimits.HeaderBytesMax <= IscsiLimits.SendBufferBytes);
        Assert.InRange(IscsiLimits.TargetMaxRecvDataSegmentBytes, IscsiLimits.MaxRecvDataSegmentBytesMin, IscsiLimits.MaxRecvDataSegmentBytesMax);
        Assert.True(IscsiLimits.DirectReceiveMinBytes <= IscsiLimits.TargetMaxRecvDataSegmentBytes);
    }
}
