"""The active-learning campaign: its config (:mod:`~workbench.campaign.config`), the
round's steps in order (:mod:`~workbench.campaign.rounds`), the steps and the loop over
rounds (:mod:`~workbench.campaign.loop`), where a campaign stands
(:mod:`~workbench.campaign.status`), a campaign's rows as stored, read without the loop
(:mod:`~workbench.campaign.store`), the report (:mod:`~workbench.campaign.report`), and a
replay against a labeled pool beside random selection
(:mod:`~workbench.campaign.replay`)."""
