//! Committed positions: resuming at the first unacknowledged record, never moving
//! backwards, and surviving close and reopen.

use tributary_core::{ConsumerConfig, ConsumerExt, Result, StartFrom};

use crate::harness::Outcome;
use crate::support::{Ctx, drain, texts, values};

/// Ack A, B, D but not C, E; after a restart the group resumes at C.
pub async fn checkpoint_capture_resumes_at_first_unacked(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent: Vec<String> = ["A", "B", "C", "D", "E"].map(String::from).to_vec();
    ctx.send_values(&stream, Some("k"), &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let got = drain(&mut *member, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&got), sent);
    for i in [3, 0, 1] {
        member.ack(&got[i].partition, &got[i].offset)?;
    }
    member.commit().await?;
    member.close().await?;
    let mut restarted = ctx.member(&stream, &group).await?;
    let resumed = drain(&mut *restarted, 3, ctx.timing.settle).await?;
    assert_eq!(
        texts(&resumed),
        ["C", "D", "E"],
        "resume at the first unacknowledged record"
    );
    restarted.close().await?;
    Ok(Outcome::Passed)
}

/// Acknowledging older records after a rewind never moves the commit backwards.
pub async fn committed_position_never_moves_backwards(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("m", 10);
    ctx.send_values(&stream, None, &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let got = drain(&mut *member, 10, ctx.timing.settle).await?;
    member.ack_all(&got)?;
    member.commit().await?;
    let p = got[0].partition.clone();
    member.seek(&p, StartFrom::Earliest).await?;
    let early = drain(&mut *member, 3, ctx.timing.settle).await?;
    assert_eq!(
        texts(&early),
        sent[..3].to_vec(),
        "the rewind re-reads from the start"
    );
    member.ack_all(&early)?;
    member.commit().await?;
    member.close().await?;
    ctx.send_values(&stream, None, &["after".to_string()]).await?;
    let mut next = ctx.member(&stream, &group).await?;
    let resumed = drain(&mut *next, 1, ctx.timing.settle).await?;
    assert_eq!(texts(&resumed), ["after"], "the commit stayed after all 10");
    next.close().await?;
    Ok(Outcome::Passed)
}

/// A group reads part of a stream, closes, and the next member continues exactly there.
pub async fn resume_after_close_between_batches(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.consumer_groups {
        return ctx.skip("capability `consumer_groups` is false");
    }
    let stream = ctx.stream(1).await?;
    let group = ctx.fresh_name("g");
    let sent = values("c", 10);
    ctx.send_values(&stream, None, &sent).await?;
    let mut member = ctx.member(&stream, &group).await?;
    let first = drain(&mut *member, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&first), sent[..5].to_vec());
    member.ack_all(&first)?;
    member.close().await?; // close commits what was acknowledged
    let mut next = ctx.member(&stream, &group).await?;
    let rest = drain(&mut *next, 5, ctx.timing.settle).await?;
    assert_eq!(
        texts(&rest),
        sent[5..].to_vec(),
        "continues after the last acknowledged record"
    );
    next.ack_all(&rest)?;
    let more = values("more", 5);
    ctx.send_values(&stream, None, &more).await?;
    let tail = drain(&mut *next, 5, ctx.timing.settle).await?;
    assert_eq!(texts(&tail), more);
    next.ack_all(&tail)?;
    next.close().await?;
    Ok(Outcome::Passed)
}

/// A durable engine keeps records and group commits across close and reopen.
pub async fn reopen_keeps_records_and_commits(ctx: Ctx) -> Result<Outcome> {
    if !ctx.caps.durable {
        return ctx.skip("capability `durable` is false");
    }
    let stream = ctx.stream(2).await?;
    let group = ctx.fresh_name("g");
    let sent = values("r", 10);
    ctx.send_values(&stream, Some("k"), &sent).await?;
    if ctx.caps.consumer_groups {
        let mut member = ctx.member(&stream, &group).await?;
        let got = drain(&mut *member, 4, ctx.timing.settle).await?;
        member.ack_all(&got[..4])?;
        member.close().await?;
    }
    let Some(backend) = ctx.reopen().await? else {
        panic!("capability `durable` is true but the harness cannot reopen the engine");
    };
    let reader = backend.consumer(ConsumerConfig::broadcast(&stream)).await?;
    let mut reader = reader;
    assert_eq!(
        texts(&drain(&mut *reader, 10, ctx.timing.settle).await?),
        sent,
        "records survive"
    );
    if ctx.caps.consumer_groups {
        let mut member = backend.consumer(ConsumerConfig::group(&stream, &group)).await?;
        assert_eq!(
            texts(&drain(&mut *member, 6, ctx.timing.settle).await?),
            sent[4..].to_vec(),
            "commits survive"
        );
        member.close().await?;
    }
    Ok(Outcome::Passed)
}
