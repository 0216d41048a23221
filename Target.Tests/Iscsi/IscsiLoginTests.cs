// The login state machine without sockets: requests as header fields + text, replies checked
// field by field (status, stage flags, every key answered).
using System.Text;
using Target.Protocol.Iscsi;
using Target.Tests.Support;

namespace Target.Tests.Iscsi;

public sealed class IscsiLoginTests
{
    internal const string Initiator = "iqn.2026-11.test:initiator";
    internal const string TargetName = "iqn.2026-11.io.target:disk";

    internal static IscsiTargetList Catalog() => new(new IscsiTarget(TargetName, new MemoryVolume("disk", 1 << 20), false));

    internal static IscsiLoginRequest Request(IscsiStage current, IscsiStage next, bool transit, bool more = false, ushort tsih = 0) =>
        new(transit, more, current, next, 0, 0, 0x800000000001, tsih, 0x1000, 1, 42, 0);

    internal static byte[] Text(params string[] pairs) => Encoding.UTF8.GetBytes(string.Join('\0', pairs) + "\0");

    internal static Dictionary<string, string> Keys(IscsiLoginReply reply)
    {
        var pairs = new List<KeyValuePair<string, string>>();
        Assert.True(IscsiText.TryParse(reply.Text, pairs, out _));
        return pairs.ToDictionary(p => p.Key, p => p.Value);
    }

    [Fact]
    public void A_libiscsi_style_login_goes_straight_to_full_feature()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text(
            "InitiatorName=" + Initiator, "TargetName=" + TargetName, "SessionType=Normal",
            "HeaderDigest=None,CRC32C", "DataDigest=None", "InitialR2T=No", "ImmediateData=Yes",
            "MaxBurstLength=262144", "FirstBurstLength=262144", "DefaultTime2Wait=2", "DefaultTime2Retain=0",
            "MaxOutstandingR2T=1", "ErrorRecoveryLevel=0", "IFMarker=No", "OFMarker=No", "MaxConnections=1",
            "MaxRecvDataSegmentLength=262144", "DataPDUInOrder=Yes", "DataSequenceInOrder=Yes"));

        Assert.Equal(IscsiLoginOutcome.Complete, reply.Outcome);
        Assert.Equal(IscsiLoginStatus.Success, reply.Status);
        Assert.True(reply.Transit);
        Assert.Equal(IscsiStage.Operational, reply.CurrentStage);
        Assert.Equal(IscsiStage.FullFeature, reply.NextStage);
        Dictionary<string, string> keys = Keys(reply);
        Assert.Equal("1", keys["TargetPortalGroupTag"]);
        Assert.Equal("None", keys["HeaderDigest"]);
        Assert.Equal("None", keys["DataDigest"]);
        Assert.Equal("No", keys["InitialR2T"]);
        Assert.Equal("Yes", keys["ImmediateData"]);
        Assert.Equal("262144", keys["MaxBurstLength"]);
        Assert.Equal("262144", keys["FirstBurstLength"]);
        Assert.Equal("0", keys["ErrorRecoveryLevel"]);
        Assert.Equal("1", keys["MaxConnections"]);
        Assert.Equal("No", keys["IFMarker"]);
        Assert.Equal(IscsiLimits.TargetMaxRecvDataSegmentBytes.ToString(), keys["MaxRecvDataSegmentLength"]);

        IscsiSessionParameters p = login.Parameters;
        Assert.Equal(Initiator, p.InitiatorName);
        Assert.Equal(262144, p.InitiatorMaxRecvDataSegmentBytes);
        Assert.False(p.InitialR2T);
        Assert.True(p.ImmediateData);
        Assert.Equal(IscsiSessionType.Normal, p.SessionType);
    }

    [Fact]
    public void Results_follow_the_rfc_functions()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text(
            "InitiatorName=" + Initiator, "TargetName=" + TargetName,
            "HeaderDigest=CRC32C,None", "DataDigest=CRC32C", "InitialR2T=Yes", "ImmediateData=No",
            "MaxBurstLength=16776192", "FirstBurstLength=16776192", "MaxOutstandingR2T=64", "DefaultTime2Wait=0",
            "ErrorRecoveryLevel=2", "X-com.example.Thing=1", "Bogus=7"));
        Dictionary<string, string> keys = Keys(reply);
        Assert.Equal("CRC32C", keys["HeaderDigest"]);
        Assert.Equal("CRC32C", keys["DataDigest"]);
        Assert.Equal("Yes", keys["InitialR2T"]);            // OR
        Assert.Equal("No", keys["ImmediateData"]);          // AND
        Assert.Equal(IscsiLimits.MaxBurstBytes.ToString(), keys["MaxBurstLength"]);      // min
        Assert.Equal(IscsiLimits.FirstBurstBytes.ToString(), keys["FirstBurstLength"]);  // min, at most MaxBurstLength
        Assert.Equal(IscsiLimits.MaxOutstandingR2T.ToString(), keys["MaxOutstandingR2T"]);
        Assert.Equal("2", keys["DefaultTime2Wait"]);        // max
        Assert.Equal("0", keys["ErrorRecoveryLevel"]);      // min
        Assert.Equal("NotUnderstood", keys["X-com.example.Thing"]);
        Assert.Equal("NotUnderstood", keys["Bogus"]);
        Assert.True(login.Parameters.HeaderDigest);
        Assert.True(login.Parameters.DataDigest);
        Assert.Equal(0, login.Parameters.UnsolicitedBytesMax);
    }

    [Fact]
    public void First_burst_is_clamped_to_max_burst()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text(
            "InitiatorName=" + Initiator, "TargetName=" + TargetName, "FirstBurstLength=131072", "MaxBurstLength=65536"));
        Assert.Equal("65536", Keys(reply)["FirstBurstLength"]);
        Assert.Equal(65536, login.Parameters.FirstBurstBytes);
    }

    [Fact]
    public void Bad_values_are_rejected_per_key()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text(
            "InitiatorName=" + Initiator, "TargetName=" + TargetName, "HeaderDigest=MD5", "InitialR2T=Maybe", "MaxBurstLength=100"));
        Dictionary<string, string> keys = Keys(reply);
        Assert.Equal("Reject", keys["HeaderDigest"]);
        Assert.Equal("Reject", keys["InitialR2T"]);
        Assert.Equal("Reject", keys["MaxBurstLength"]);
        Assert.Equal(IscsiLoginOutcome.Complete, reply.Outcome);
    }

    [Fact]
    public void Discovery_session_answers_session_keys_as_irrelevant()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text(
            "InitiatorName=" + Initiator, "SessionType=Discovery", "MaxBurstLength=262144", "HeaderDigest=None"));
        Assert.Equal(IscsiLoginOutcome.Complete, reply.Outcome);
        Dictionary<string, string> keys = Keys(reply);
        Assert.Equal("Irrelevant", keys["MaxBurstLength"]);
        Assert.Equal("None", keys["HeaderDigest"]);
        Assert.False(keys.ContainsKey("TargetPortalGroupTag"));
        Assert.Equal(IscsiSessionType.Discovery, login.Parameters.SessionType);
    }

    [Theory]
    [InlineData("TargetName=iqn.2026-11.io.target:nope", IscsiLoginStatus.NotFound)]
    [InlineData("SessionType=Normal", IscsiLoginStatus.MissingParameter)]
    [InlineData("SessionType=Weird", IscsiLoginStatus.SessionTypeNotSupported)]
    public void Bad_leading_keys_fail_the_login(string key, ushort status)
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply reply = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text("InitiatorName=" + Initiator, key));
        Assert.Equal(IscsiLoginOutcome.Failed, reply.Outcome);
        Assert.Equal(status, reply.Status);
    }

    [Fact]
    public void Missing_initiator_name_version_and_tsih_fail()
    {
        Assert.Equal(IscsiLoginStatus.MissingParameter,
            new IscsiLogin(Catalog(), new IscsiServerOptions()).Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, true), Text("TargetName=" + TargetName)).Status);

        var newer = Request(IscsiStage.Operational, IscsiStage.FullFeature, true) with { VersionMin = 1, VersionMax = 1 };
        Assert.Equal(IscsiLoginStatus.UnsupportedVersion, new IscsiLogin(Catalog(), new IscsiServerOptions()).Process(newer, Text("InitiatorName=" + Initiator)).Status);

        Assert.Equal(IscsiLoginStatus.SessionDoesNotExist,
            new IscsiLogin(Catalog(), new IscsiServerOptions()).Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, true, tsih: 5), Text("InitiatorName=" + Initiator)).Status);
    }

    [Fact]
    public void Security_stage_with_auth_none_then_operational()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        IscsiLoginReply security = login.Process(Request(IscsiStage.Security, IscsiStage.Operational, transit: true),
            Text("InitiatorName=" + Initiator, "TargetName=" + TargetName, "AuthMethod=CHAP,None"));
        Assert.Equal(IscsiLoginOutcome.Continue, security.Outcome);
        Assert.True(security.Transit);
        Assert.Equal(IscsiStage.Security, security.CurrentStage);
        Assert.Equal(IscsiStage.Operational, security.NextStage);
        Assert.Equal("None", Keys(security)["AuthMethod"]);

        IscsiLoginReply operational = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), Text("HeaderDigest=None"));
        Assert.Equal(IscsiLoginOutcome.Complete, operational.Outcome);
    }

    [Fact]
    public void Continued_text_is_acknowledged_and_joined()
    {
        var login = new IscsiLogin(Catalog(), new IscsiServerOptions());
        byte[] text = Text("InitiatorName=" + Initiator, "TargetName=" + TargetName, "HeaderDigest=None");
        IscsiLoginReply first = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: false, more: true), text.AsSpan(0, 10));
        Assert.Equal(IscsiLoginOutcome.Continue, first.Outcome);
        Assert.Empty(first.Text);
        Assert.False(first.Transit);
        IscsiLoginReply last = login.Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, transit: true), text.AsSpan(10));
        Assert.Equal(IscsiLoginOutcome.Complete, last.Outcome);
        Assert.Equal("None", Keys(last)["HeaderDigest"]);
    }

    [Fact]
    public void Initiator_allow_list_is_enforced()
    {
        var options = new IscsiServerOptions
        {
            AllowedInitiators = new Dictionary<string, IReadOnlyList<string>> { ["disk"] = ["iqn.2026-11.test:other"] },
        };
        IscsiLoginReply reply = new IscsiLogin(Catalog(), options).Process(Request(IscsiStage.Operational, IscsiStage.FullFeature, true),
            Text("InitiatorName=" + Initiator, "TargetName=" + TargetName));
        Assert.Equal(IscsiLoginStatus.AuthorizationFailure, reply.Status);
    }
}
