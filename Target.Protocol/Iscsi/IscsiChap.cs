// CHAP with MD5 (RFC 1994, RFC 7143 12.1.3) on the target side: one-way (the initiator proves
// its secret) and mutual (the target proves its own secret when the initiator asks).
// Invariants: the challenge is fresh random bytes per login; a response is compared in constant
// time; an initiator challenge equal to ours is refused (reflection); any protocol deviation
// fails the login with an authentication failure rather than letting it through.
using System.Security.Cryptography;

namespace Target.Protocol.Iscsi;

internal sealed class IscsiChap
{
    /// <summary>CHAP_A value for MD5.</summary>
    public const string Md5Algorithm = "5";

    /// <summary>Challenge length in bytes (RFC 7143: at least as long as the secret's entropy; 16 is the common choice).</summary>
    public const int ChallengeBytes = 16;

    /// <summary>Shortest initiator challenge accepted for mutual CHAP.</summary>
    public const int InitiatorChallengeBytesMin = 8;

    /// <summary>Longest challenge accepted (RFC 7143 12.1.3 caps binary values at 1024 bytes).</summary>
    public const int ChallengeBytesMax = 1024;

    private enum State
    {
        AwaitingAlgorithm,
        AwaitingResponse,
        Succeeded,
        Failed,
    }

    private readonly IscsiChapCredentials _credentials;
    private State _state = State.AwaitingAlgorithm;
    private byte _id;
    private byte[] _challenge = [];

    public IscsiChap(IscsiChapCredentials credentials)
    {
        _credentials = credentials;
    }

    public bool Succeeded => _state == State.Succeeded;

    public bool Failed => _state == State.Failed;

    /// <summary>Why authentication failed (for the log; never sent to the initiator).</summary>
    public string? FailureReason { get; private set; }

    /// <summary>Handles the CHAP_* keys of one login PDU and appends the target's keys to <paramref name="reply"/>.</summary>
    public void Process(IReadOnlyDictionary<string, string> chapKeys, IscsiTextWriter reply)
    {
        switch (_state)
        {
            case State.AwaitingAlgorithm:
                if (!chapKeys.TryGetValue("CHAP_A", out string? algorithms))
                {
                    if (chapKeys.Count > 0) Fail("CHAP keys before CHAP_A");
                    return;
                }
                if (!algorithms.Split(',').Contains(Md5Algorithm))
                {
                    reply.Add("CHAP_A", IscsiValues.Reject);
                    Fail($"initiator offered CHAP_A={algorithms}, MD5 (5) only is supported");
                    return;
                }
                _id = (byte)RandomNumberGenerator.GetInt32(256);
                _challenge = RandomNumberGenerator.GetBytes(ChallengeBytes);
                reply.Add("CHAP_A", Md5Algorithm);
                reply.Add("CHAP_I", IscsiValues.Format(_id));
                reply.Add("CHAP_C", "0x" + Convert.ToHexString(_challenge).ToLowerInvariant());
                _state = State.AwaitingResponse;
                return;

            case State.AwaitingResponse:
                VerifyResponse(chapKeys, reply);
                return;

            default:
                if (chapKeys.Count > 0) Fail("CHAP keys after the exchange finished");
                return;
        }
    }

    private void VerifyResponse(IReadOnlyDictionary<string, string> keys, IscsiTextWriter reply)
    {
        if (!keys.TryGetValue("CHAP_N", out string? name) || !keys.TryGetValue("CHAP_R", out string? responseText))
        {
            Fail("CHAP_N or CHAP_R missing");
            return;
        }
        if (!TryDecodeBinary(responseText, out byte[]? response) || response.Length != MD5.HashSizeInBytes)
        {
            Fail("CHAP_R is not a 16-byte binary value");
            return;
        }
        byte[] expected = Response(_id, _credentials.Secret, _challenge);
        bool nameMatches = string.Equals(name, _credentials.UserName, StringComparison.Ordinal);
        if (!CryptographicOperations.FixedTimeEquals(expected, response) || !nameMatches)
        {
            Fail(nameMatches ? "wrong CHAP response (bad secret)" : $"unknown CHAP user '{name}'");
            return;
        }

        bool wantsMutual = keys.ContainsKey("CHAP_I") || keys.ContainsKey("CHAP_C");
        if (wantsMutual)
        {
            if (!_credentials.Mutual)
            {
                Fail("initiator asked for mutual CHAP but no target secret is configured");
                return;
            }
            if (!keys.TryGetValue("CHAP_I", out string? idText) || !IscsiValues.TryParseNumber(idText, 0, 255, out long initiatorId)
                || !keys.TryGetValue("CHAP_C", out string? challengeText) || !TryDecodeBinary(challengeText, out byte[]? initiatorChallenge)
                || initiatorChallenge.Length < InitiatorChallengeBytesMin || initiatorChallenge.Length > ChallengeBytesMax)
            {
                Fail("bad mutual CHAP_I / CHAP_C");
                return;
            }
            if (initiatorChallenge.AsSpan().SequenceEqual(_challenge))
            {
                Fail("initiator reflected the target's challenge");
                return;
            }
            byte[] targetResponse = Response((byte)initiatorId, _credentials.MutualSecret!, initiatorChallenge);
            reply.Add("CHAP_N", _credentials.MutualUserName!);
            reply.Add("CHAP_R", "0x" + Convert.ToHexString(targetResponse).ToLowerInvariant());
        }
        _state = State.Succeeded;
    }

    private void Fail(string reason)
    {
        _state = State.Failed;
        FailureReason = reason;
    }

    /// <summary>MD5(id || secret || challenge) (RFC 1994).</summary>
    public static byte[] Response(byte id, string secret, ReadOnlySpan<byte> challenge)
    {
        byte[] secretBytes = System.Text.Encoding.UTF8.GetBytes(secret);
        byte[] input = new byte[1 + secretBytes.Length + challenge.Length];
        input[0] = id;
        secretBytes.CopyTo(input, 1);
        challenge.CopyTo(input.AsSpan(1 + secretBytes.Length));
        return MD5.HashData(input);
    }

    /// <summary>Decodes an RFC 7143 binary value: "0x" hex or "0b" base64.</summary>
    public static bool TryDecodeBinary(string text, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out byte[]? bytes)
    {
        bytes = null;
        try
        {
            if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            {
                string hex = text.Substring(2);
                if (hex.Length % 2 == 1) hex = "0" + hex;
                bytes = Convert.FromHexString(hex);
            }
            else if (text.StartsWith("0b", StringComparison.OrdinalIgnoreCase))
            {
                bytes = Convert.FromBase64String(text.Substring(2));
            }
        }
        catch (FormatException)
        {
            bytes = null;
        }
        return bytes is { Length: > 0 };
    }
}
